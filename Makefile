# copytrade — every target creates the venv and installs what it needs on a fresh machine.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help venv fmt lint typecheck test test-fast demo bench chaos deploy-tools clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

venv: $(STAMP) ## create .venv and install copytrade with its dev tools

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

deploy-tools: $(STAMP) ## promtool and kubectl for the deploy checks
	bash scripts/install-deploy-tools.sh $(VENV)

fmt: $(STAMP) ## format the code and fix the lint findings ruff can fix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lint: $(STAMP) ## ruff: formatting and lint rules
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: $(STAMP) ## mypy strict on services/, shared/, tests/, scripts/ and support/
	$(BIN)/mypy

test: $(STAMP) deploy-tools lint typecheck ## lint, typecheck and the whole test suite
	$(BIN)/python -m pytest -n 2 --dist loadfile

test-fast: $(STAMP) ## the test suite only
	$(BIN)/python -m pytest -n 2 --dist loadfile

chaos: $(STAMP) ## long fault-injection runs: kills, NATS restarts, exchange faults; prints figures
	$(BIN)/python -m pytest tests/chaos -s -m chaos

demo: $(STAMP) ## run the whole system on this machine and print each copy
	$(BIN)/python -m scripts.demo

bench: $(STAMP) ## latency, throughput and memory figures
	$(BIN)/python -m scripts.bench

clean: ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .demo .bench
