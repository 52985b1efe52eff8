# Quick start: `make demo` (synthetic world, CPU) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test test-all bench

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: $(VENV)/.installed
	$(PY) -m pytest -q -m "not gpu" $(PYTEST_ARGS)

demo: $(VENV)/.installed
	$(PY) scripts/demo.py

# CPU benchmarks (each prints one JSON line); GPU ones: see docs/performance.md.
bench: $(VENV)/.installed
	$(PY) benchmarks/model_params.py
	$(PY) benchmarks/bench_polar.py
	$(PY) benchmarks/bench_loader.py
	$(PY) benchmarks/bench_synthetic.py
	$(PY) benchmarks/bench_eval.py --device cpu
