# agentcast developer commands. `make demo` and `make test` work on a fresh machine with
# Python 3.11+; each creates .venv and installs what it needs on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo serve test lint typecheck unit jstest bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "agentcast needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench,crewai]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/agentcast demo

serve: $(STAMP)
	$(BIN)/agentcast serve

lint: $(STAMP)
	$(BIN)/ruff check src tests examples
	$(BIN)/ruff format --check src tests examples

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest --cov=agentcast --cov-report=term:skip-covered $(PYTEST_ARGS)

JS := clients/js

$(JS)/node_modules/.installed: $(JS)/package.json $(JS)/package-lock.json
	cd $(JS) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

jstest: $(STAMP) $(JS)/node_modules/.installed
	cd $(JS) && AGENTCAST_PYTHON=$(abspath $(BIN))/python npm test --silent
	cd $(JS) && npx --no-install tsc -p tsconfig.json

test: lint typecheck unit jstest

bench: $(STAMP)
	$(BIN)/agentcast bench fanout --subscribers 1000 --messages 200 --size 64 --json
	$(BIN)/agentcast bench fanout --subscribers 1000 --messages 200 --size 64 --server naive --json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
