# Two commands do all the set-up on a fresh machine:
#   make demo   build the embedded demo data, train, evaluate, draw the figures
#   make test   run the test suite
# Each creates .venv and installs requirements.txt into it when missing or stale.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements-installed

.PHONY: test demo bench clean-demo

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m utils.demo

bench: $(STAMP)
	$(PY) bench/bench_inference.py

clean-demo:
	rm -rf data/demo checkpoint/demo results/demo
