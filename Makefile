# The two commands a user needs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to the builds this project is tested with (pip takes them from local disk here).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-fast lint bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/autoprune search --preset demo --out runs/demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "not slow"

# ruff (rules, format and line length in pyproject.toml) and mypy (same) over the package and the built-in plugins.
LINTED := autoprune plugins tests benchmarks examples
lint: $(VENV)/.installed
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

# Time-boxed (within 2 h / 20 min on 2 cores); the same command continues a run the limit stopped.
bench: $(VENV)/.installed
	$(BIN)/python -m benchmarks.suite --full

bench-quick: $(VENV)/.installed
	$(BIN)/python -m benchmarks.suite --quick

clean:
	rm -rf runs .pytest_cache
