# Two entry points for a fresh machine (Python 3.11+ with venv): `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PORT   ?= 8888
BIN    := $(VENV)/bin
# The image deploy/ runs (deploy/kustomization.yaml `images:`): the package version as the tag.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE  ?= ghcr.io/gpuslice/gpuslice:$(VERSION)
DOCKER ?= docker

.PHONY: demo test test-lowest lint bench clean image image-push

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

LOWEST ?= .venv-lowest

$(LOWEST)/.installed: pyproject.toml
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --quiet uv
	$(LOWEST)/bin/uv pip install --quiet --python $(LOWEST)/bin/python --resolution lowest-direct -e '.[test]'
	touch $@

## The dependency floors are real: install the lowest versions pyproject.toml allows for every direct
## dependency (uv --resolution lowest-direct) and run the tests that need no control plane on them.
test-lowest: $(LOWEST)/.installed
	$(LOWEST)/bin/python -m pytest --ignore=tests/kube -p no:cacheprovider

## Build the one image of the extender and the node agent (the Dockerfile), tagged $(IMAGE).
image:
	$(DOCKER) build -t $(IMAGE) .

## Build and push it; for your own registry: make image-push IMAGE=registry.example.com/gpuslice:$(VERSION),
## then point deploy/kustomization.yaml's `images:` at it.
image-push: image
	$(DOCKER) push $(IMAGE)

bench: $(VENV)/.installed
	$(BIN)/python bench/extender_bench.py --json bench/results/extender.json

clean:
	rm -rf $(VENV) $(LOWEST) .pytest_cache .ruff_cache .hypothesis
