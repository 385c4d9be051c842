# Two entry points (see README): `make demo` and `make test`.
# Both create .venv on first use and install geoseg with the pinned constraints.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.geoseg-installed

.PHONY: install demo test lint format test-cluster test-long test-all clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,dev]'
	touch $(STAMP)

demo: install
	$(BIN)/geoseg demo-data --out data/demo
	$(BIN)/geoseg run jobs/flood_survey.yaml

test: install
	$(BIN)/python -m pytest

# ruff (lint + format check) and mypy, configured in pyproject.toml; CI runs this before the tests.
lint: install
	$(BIN)/ruff check geoseg tests
	$(BIN)/ruff format --check geoseg tests
	$(BIN)/mypy

# Rewrite the sources in the house format and apply ruff's safe fixes.
format: install
	$(BIN)/ruff format geoseg tests
	$(BIN)/ruff check --fix geoseg tests

test-cluster: install
	$(BIN)/python -m pytest -m cluster

# The end-to-end runs of 15 s or more (S3 job, training resume, bench train, 16-bit RGBN job, instance job, CRF, survey).
test-long: install
	$(BIN)/python -m pytest -m long

test-all: install  # everything but the GPU tests (slow ones included: hours on 2 cores)
	$(BIN)/python -m pytest -m 'not gpu'

clean:
	rm -rf out data/demo .pytest_cache
