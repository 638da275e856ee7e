# `make test` and `make demo` do all set-up themselves on a fresh machine with only Python.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-integration demo lint bench-cpu clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# RemoteEngine against a real llama-server (built once per machine, cached outside the
# checkout; 10-15 minutes on two cores) and the real SmolLM2.
test-integration: $(STAMP)
	bin="$$(scripts/build_llama_server.sh)" && LLAMA_SERVER="$$bin" \
	  $(BIN)/python -m pytest -q -s -m integration tests/integration

demo: $(STAMP)
	$(BIN)/agentcore demo

lint: $(STAMP)
	$(BIN)/ruff check agentcore tests examples

bench-cpu: $(STAMP)
	$(BIN)/python -m agentcore.bench cpu

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
