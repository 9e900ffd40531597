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
# whose Python is gone (removed, upgraded) is made again.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements-installed
APP_STAMP := $(VENV)/.requirements-app-installed
ARGS   ?=
# pytest-xdist workers: two halve the suite's time on 2 cores (each test uses tiny configurations and
# most of its time starts processes); WORKERS=0 runs it in one process
WORKERS ?= 2

# (Re)make the venv with PYTHON; a Python too old, or none, is refused in one line before anything is written
NEW_ENOUGH := -c 'import sys; sys.exit(sys.version_info < (3, 10))'
NEW_VENV = { { $(PYTHON) $(NEW_ENOUGH) 2>/dev/null || { echo "error: PYTHON=$(PYTHON) is \
$$($(PYTHON) --version 2>/dev/null || echo not found); BaryIR needs Python 3.10 or newer: install one and name it, \
e.g. make $(or $(MAKECMDGOALS),demo) PYTHON=python3.11" >&2; exit 1; }; } \
	&& echo "making $(VENV) with $(PYTHON) ($$($(PYTHON) --version))" && $(PYTHON) -m venv --clear $(VENV); }

.PHONY: help test test-quick demo bench clean-demo app browser
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

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

browser:
	@sh utils/app/ensure_browser.sh

test: $(STAMP) $(APP_STAMP) browser
	$(PY) -m pytest -q -n $(WORKERS) tests $(ARGS)

test-quick: $(STAMP)
	$(PY) -m pytest -q -n $(WORKERS) -m "not slow" tests $(ARGS)

demo: $(STAMP)
	$(PY) -m utils.demo $(ARGS)

app: $(APP_STAMP)
	$(PY) -m utils.app $(ARGS)

bench: $(STAMP)
	$(PY) bench/bench_inference.py $(ARGS)

clean-demo:
	rm -rf $(foreach d,data checkpoint results,$(d)/demo $(d)/demo-quick $(d)/demo-seed* $(d)/demo-quick-seed*)
