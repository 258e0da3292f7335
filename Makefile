# The contract other tools rely on: setup, plan STACK=<name>, test.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STACK ?= prod-70b

.PHONY: setup plan test lint bench
# setup: everything the tests need; plan installs only what an offline plan needs.
setup:
	@scripts/bootstrap.sh test

plan:
	@scripts/bootstrap.sh plan
	@$(BIN)/gpuinfra plan $(STACK)

lint: setup
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/sizing_sweep.py --write docs/benchmarks/sizing.md
	$(BIN)/python benchmarks/plan_timing.py --write docs/benchmarks/plan.md
	$(BIN)/python benchmarks/ansible_site.py --write docs/benchmarks/ansible.md
	$(BIN)/python benchmarks/weights_staging.py --write docs/benchmarks/staging.md
