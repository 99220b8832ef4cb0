# The two set-up commands: `make demo` and `make test`. Both are idempotent:
# the virtual environment is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-all lint format ui bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[cpu]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-run

demo: $(VENV)/.installed-run  ## install, then run the whole asset graph on the embedded default
	$(BIN)/aindex demo

test: $(VENV)/.installed-dev  ## install dev extras, start the test servers, run the suite, stop them
	scripts/run-tests.sh

test-all: $(VENV)/.installed-dev  ## the suite plus the slow marker
	scripts/run-tests.sh -m ""

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

ui: $(VENV)/.installed-run
	$(BIN)/aindex ui

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/storage.py
	$(BIN)/python benchmarks/activation.py
	$(BIN)/python benchmarks/pipeline.py

clean:
	rm -rf $(VENV) aindex_data .dagster_home .pytest_cache .ruff_cache
