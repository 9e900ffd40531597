# Two commands do all the set-up on a fresh machine:
#   make demo   build the embedded demo data, train, evaluate, draw the figures
#   make test   run the test suite
#   make test-quick   the suite without the slow end-to-end tests (while editing)
# Each creates .venv, installs requirements.txt and the project itself (pip install -e .) when
# missing or stale.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements-installed

.PHONY: test test-quick demo bench clean-demo

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

test-quick: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

demo: $(STAMP)
	$(PY) -m utils.demo

bench: $(STAMP)
	$(PY) bench/bench_inference.py

clean-demo:
	rm -rf data/demo checkpoint/demo results/demo
