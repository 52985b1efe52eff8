# Quick start: `make demo` (synthetic world, CPU) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test test-all bench clean-demo

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: $(VENV)/.installed
	$(PY) -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)

demo: $(VENV)/.installed
	$(PY) scripts/demo.py

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_eval.py
	$(PY) benchmarks/bench_loader.py
	$(PY) benchmarks/bench_polar.py
	$(PY) benchmarks/bench_synthetic.py
