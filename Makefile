# Two commands from the README: `make demo` runs the gate on the built-in default,
# `make test` runs the whole test suite. Both install into .venv first if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint install bench docs
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: install
	$(VENV)/bin/ci-compress demo

test: install
	$(PY) -m pytest -n 2

bench: install
	$(PY) benchmarks/run.py

docs: install
	$(PY) docs/generate.py

lint: install
	$(VENV)/bin/ruff check ci_compress tests benchmarks docs
	$(VENV)/bin/ruff format --check ci_compress tests benchmarks docs
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
