# The contract other tools rely on: setup, plan STACK=<name>, test.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STACK ?= prod-70b

.PHONY: setup plan test test-fast lint bench
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

# The edit loop: unit, policy and CLI tests without the slow ones (real processes, moto, generated runs).
# `make test` stays the whole suite and what CI runs.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" tests/unit tests/policies

bench: setup
	$(BIN)/python benchmarks/sizing_sweep.py --write docs/benchmarks/sizing.md
	$(BIN)/python benchmarks/plan_timing.py --write docs/benchmarks/plan.md
	$(BIN)/python benchmarks/ansible_site.py --write docs/benchmarks/ansible.md
	$(BIN)/python benchmarks/weights_staging.py --write docs/benchmarks/staging.md
