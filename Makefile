# Two entry points that work on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test demo lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the CPU build on this machine's disk, so nothing pulls a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Runs the docstring examples too (tests/test_docstring_examples.py).
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

# The type checker's settings are in pyproject.toml ([tool.mypy]).
lint: $(STAMP)
	$(VENV)/bin/ruff check hgc_tune training tests analysis
	$(VENV)/bin/ruff format --check hgc_tune training tests analysis
	$(VENV)/bin/mypy

demo: $(STAMP)
	$(VENV)/bin/hgc-tune demo

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache
