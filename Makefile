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
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
