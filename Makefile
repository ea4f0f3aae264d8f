# Two entry points for a fresh machine (Python 3.11+ with venv): `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PORT   ?= 8888
BIN    := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

## Set up and serve the extender over the built-in demo cluster on 127.0.0.1:$(PORT).
demo: $(VENV)/.installed
	$(BIN)/gpuslice serve --demo --port $(PORT)

## Set up and run lint, the layer contract and the whole test suite.
test: $(VENV)/.installed
	$(BIN)/ruff check extender tests bench
	$(BIN)/python -m pytest

bench: $(VENV)/.installed
	$(BIN)/python bench/extender_bench.py --json bench/results/extender.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
