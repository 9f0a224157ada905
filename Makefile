# The two commands a fresh clone needs: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test lint bench setup clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install -c constraints.txt -e '.[dev]' 2>$(VENV)/pip.log || (cat $(VENV)/pip.log; exit 1)
	$(BIN)/python -c "import ray, pydantic, fsspec, s3fs, moto, pytest" 
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/keel demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(PIP) install -c constraints.txt -e '.[dev,bench]' 2>$(VENV)/pip.log || (cat $(VENV)/pip.log; exit 1)
	$(BIN)/python -m bench.orchestration

clean:
	rm -rf $(VENV) .keel .mypy_cache .pytest_cache .ruff_cache
