# Two commands do all the set-up on a fresh machine:
#   make demo   build the embedded demo data, train, evaluate, draw the figures
#   make test   run the test suite
#   make test-quick   the suite without the slow end-to-end tests (while editing)
#   make app    the local web app: restore an image in the browser (ARGS="--model PATH --port N")
#   make bench  the CPU inference benchmark (bench/bench_inference.py; about 5 min, run it alone)
#   make clean-demo   delete the demo's data, checkpoints and results (the next make demo starts afresh)
#   demo, app and bench pass ARGS on to their script: make demo ARGS=--quick, make bench ARGS="--rounds 1"
# Each creates .venv, installs requirements.txt and the project itself (pip install -e .) when
# missing or stale. `make app` and `make test` also install requirements-app.txt (Gradio, Selenium);
# `make test` also installs headless Chromium for the browser test when it can (utils/app/ensure_browser.sh).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements-installed
APP_STAMP := $(VENV)/.requirements-app-installed
ARGS   ?=
# pytest-xdist workers: two halve the suite's time on 2 cores (each test uses tiny configurations and
# most of its time starts processes); WORKERS=0 runs it in one process
WORKERS ?= 2

.PHONY: test test-quick demo bench clean-demo app browser

$(STAMP): requirements.txt pyproject.toml
	@# none yet, or one left without pip (a failed start, another tool): pip is added, the venv made only if need be
	@$(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip -q >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	@touch $(STAMP)

$(APP_STAMP): $(STAMP) requirements-app.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-app.txt
	@touch $(APP_STAMP)

browser:
	@sh utils/app/ensure_browser.sh

test: $(STAMP) $(APP_STAMP) browser
	$(PY) -m pytest -q -n $(WORKERS) tests

test-quick: $(STAMP)
	$(PY) -m pytest -q -n $(WORKERS) -m "not slow" tests

demo: $(STAMP)
	$(PY) -m utils.demo $(ARGS)

app: $(APP_STAMP)
	$(PY) -m utils.app $(ARGS)

bench: $(STAMP)
	$(PY) bench/bench_inference.py $(ARGS)

clean-demo:
	rm -rf $(foreach d,data checkpoint results,$(d)/demo $(d)/demo-quick $(d)/demo-seed* $(d)/demo-quick-seed*)
