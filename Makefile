# Two commands do all the set-up on a fresh machine:
#   make demo   build the embedded demo data, train, evaluate, draw the figures
#   make test   run the test suite
#   make test-quick   the suite without the slow end-to-end tests (while editing)
#   make app    the local web app: restore an image in the browser (ARGS="--model PATH --port N")
#   make bench  the CPU inference benchmark (bench/bench_inference.py; about 5 min, run it alone)
#   make clean-demo   delete the demo's data, checkpoints and results (the next make demo starts afresh)
#   demo, app and bench pass ARGS on to their script: make demo ARGS=--quick, make bench ARGS="--rounds 1";
#   test and test-quick to pytest: make test-quick ARGS="-k tiling -x"
# Each creates .venv, installs requirements.txt and the project itself (pip install -e .) when
# missing or stale. `make app` and `make test` also install requirements-app.txt (Gradio, Selenium);
# `make test` also installs headless Chromium for the browser test when it can (utils/app/ensure_browser.sh).
# PYTHON makes the venv (3.10 or newer), when there is none: rm -rf .venv; make demo PYTHON=python3.12. A .venv
# whose Python is gone (removed, upgraded) is made again. Two makes started at once set .venv up one after the other.
# From another folder, make -f /path/to/Makefile test runs in the project's folder, as make -C /path/to test does
# (relative paths in ARGS are then the project's).
PYTHON ?= python3
# this Makefile and its folder, the project's
ROOT := $(realpath $(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
THIS := $(ROOT)/$(notdir $(lastword $(MAKEFILE_LIST)))

ifneq ($(realpath $(CURDIR)),$(ROOT))
# Run from another folder (make -f), the set-up made a stray .venv there and stopped at "No rule to make target
# 'requirements.txt'": every goal is run again in the project's folder (make says "Entering directory ...").
GOALS := $(or $(MAKECMDGOALS),help)
.PHONY: $(GOALS)
.NOTPARALLEL:
$(firstword $(GOALS)):
	@$(MAKE) -C $(ROOT) -f $(THIS) $(MAKECMDGOALS)
$(filter-out $(firstword $(GOALS)),$(GOALS)):
	@:
else
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements-installed
APP_STAMP := $(VENV)/.requirements-app-installed
ARGS   ?=
# pytest-xdist workers: two halve the suite's time on 2 cores (each test uses tiny configurations and
# most of its time starts processes); WORKERS=0 runs it in one process
WORKERS ?= 2

# the goals the user asked for, named in the error below (the set-up runs in a make of its own: see SET_UP)
ASKED ?= $(or $(MAKECMDGOALS),demo)
# (Re)make the venv with PYTHON; a Python too old, or none, is refused in one line before anything is written
NEW_ENOUGH := -c 'import sys; sys.exit(sys.version_info < (3, 10))'
CHECK_PYTHON = { $(PYTHON) $(NEW_ENOUGH) 2>/dev/null || { echo "error: PYTHON=$(PYTHON) is \
$$($(PYTHON) --version 2>/dev/null || echo not found); BaryIR needs Python 3.10 or newer: install one and name it, \
e.g. make $(ASKED) PYTHON=python3.11" >&2; exit 1; }; }
NEW_VENV = { $(CHECK_PYTHON) \
	&& echo "making $(VENV) with $(PYTHON) ($$($(PYTHON) --version))" && $(PYTHON) -m venv --clear $(VENV); }

.PHONY: help test test-quick demo bench clean-demo app browser venv venv-app _venv _venv-app
# `make` alone lists the commands above (it made .venv and stopped, without a word)
.DEFAULT_GOAL := help
# one recipe at a time, also under make -j or MAKEFLAGS=-j: `make clean-demo demo` must not delete what the demo
# writes, nor `make demo app` install into .venv while the demo runs from it
.NOTPARALLEL:

# none yet, or its link to a Python since removed: a new venv, whose new pyvenv.cfg has the packages installed
# again below (its python links to an interpreter older than the stamp)
$(PY):
	@$(NEW_VENV)
$(VENV)/pyvenv.cfg: ;

$(STAMP): $(PY) $(VENV)/pyvenv.cfg requirements.txt pyproject.toml
	@# a venv of a Python too old, or one left without pip (a failed start, another tool): pip is added, the venv
	@# made again only if need be
	@$(PY) $(NEW_ENOUGH) 2>/dev/null || $(NEW_VENV)
	@$(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip -q >/dev/null 2>&1 || $(NEW_VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	@touch $(STAMP)

$(APP_STAMP): $(STAMP) requirements-app.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-app.txt
	@touch $(APP_STAMP)

# The set-up (the venv and its installs) runs in a make of its own, under an flock on this Makefile: `make test` and
# `make demo` started together on a fresh clone both made .venv (one's --clear deleting what the other installed)
# and both ran pip into it. The second waits, saying so, and its make then finds everything done. Without flock
# (util-linux; not on macOS) the set-up runs unlocked, as before.
FLOCK := $(shell command -v flock 2>/dev/null)
# (+: under make -n too, whose set-up make then shows what it would run)
define SET_UP
	+@$(if $(FLOCK),$(FLOCK) -n -E 75 $(THIS) )$(MAKE) --no-print-directory -f $(THIS) ASKED='$(ASKED)' $(1); s=$$?; \
	if [ $$s = 75 ]; then echo "waiting for another make to finish setting up $(VENV) ..."; \
		$(FLOCK) $(THIS) $(MAKE) --no-print-directory -f $(THIS) ASKED='$(ASKED)' $(1); s=$$?; fi; exit $$s
endef
# a PYTHON that cannot make the venv needed is said here, in one line, not by the set-up's make too
venv:
	@[ -x $(PY) ] || $(CHECK_PYTHON)
	$(call SET_UP,_venv)
venv-app:
	@[ -x $(PY) ] || $(CHECK_PYTHON)
	$(call SET_UP,_venv-app)
_venv: $(STAMP)
	@:
_venv-app: $(APP_STAMP)
	@:

help:
	@sed -n 's/^#   //p' $(THIS)

browser:
	@sh utils/app/ensure_browser.sh

test: venv-app browser
	$(PY) -m pytest -q -n $(WORKERS) tests $(ARGS)

test-quick: venv
	$(PY) -m pytest -q -n $(WORKERS) -m "not slow" tests $(ARGS)

demo: venv
	$(PY) -m utils.demo $(ARGS)

app: venv-app
	$(PY) -m utils.app $(ARGS)

bench: venv
	$(PY) bench/bench_inference.py $(ARGS)

clean-demo:
	rm -rf $(foreach d,data checkpoint results,$(d)/demo $(d)/demo-quick $(d)/demo-seed* $(d)/demo-quick-seed*)
endif
