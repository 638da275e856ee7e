# `make test` and `make demo` do all set-up themselves on a fresh machine with only Python.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint bench-cpu clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/agentcore demo

lint: $(STAMP)
	$(BIN)/ruff check agentcore tests examples

bench-cpu: $(STAMP)
	$(BIN)/python -m agentcore.bench cpu

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
