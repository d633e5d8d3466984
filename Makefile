# The two commands of the README quick start: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run test lint typecheck unit bench fmt gateway

setup:
	@bash scripts/setup.sh

# Runs pdp on the bundled example policies with an embedded default.
run: setup
	@bash scripts/run.sh

# A real MCP tool call through Envoy and pdp, allowed and denied (pdp gateway --dev).
gateway: setup
	$(VENV)/bin/pdp gateway --dev

# The whole suite: lint, strict typing, then pytest (parallel).
test: setup lint typecheck unit

lint:
	$(VENV)/bin/ruff check pdp tests bench scripts examples
	$(VENV)/bin/ruff format --check pdp tests bench scripts examples

typecheck:
	$(VENV)/bin/mypy pdp

unit:
	$(PY) -m pytest -n 2 -q

bench: setup
	$(PY) bench/engine.py

fmt:
	$(VENV)/bin/ruff format pdp tests bench scripts examples
	$(VENV)/bin/ruff check --fix pdp tests bench scripts examples
