# turnbench — two commands on a fresh machine: `make bench` and `make test`; each sets itself up.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast lint fmt check docs bench bench-quick gate baseline proto soak stream load clean

setup: $(STAMP)

# (re)install when the project definition changes
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: setup
	$(BIN)/python -m pytest -q -x -m "not slow"

# ruff (lint and format), mypy strict (scripts/ too), and the import contracts of pyproject.toml (the layers
# between packages and inside loadtests/, no cycles); CI runs it before the tests
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# the fuzz suite at full size, then 10 min of mixed rollouts per transport and 10,000 churned connections with
# the server's memory sampled (reports/soak/: soak.json, soak.csv, soak.png); SOAK_ARGS="--minutes 2" for a shorter one
soak: setup
	TURNBENCH_FUZZ=full $(BIN)/python -m pytest -q -p no:cacheprovider tests/fuzz
	$(BIN)/python scripts/soak.py $(SOAK_ARGS)

# the streaming path: tokens/s and server CPU per token per transport, adaptive coalescing off and on (~3 min)
stream: setup
	$(BIN)/python scripts/stream_bench.py $(STREAM_ARGS)

# each transport under Locust (a master and 2 worker processes) for 30 s; raw samples merged into one table
# (reports/load/: load.md, Locust's CSV and HTML); LOAD_ARGS="--run-time 10s --users 4" for a shorter one
load: setup
	$(BIN)/python scripts/load.py $(LOAD_ARGS)

# lint, then the tests: what to run before a commit
check: lint test

# the formatting and the lint fixes `make lint` asks for
fmt: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# the documentation site (mkdocs.yml, docs/), built with --strict: a warning fails it
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

proto: setup
	$(BIN)/python -m turnbench.v1.codegen

bench: setup
	$(BIN)/turnbench bench

bench-quick: setup
	$(BIN)/turnbench bench --quick

gate: setup
	$(BIN)/turnbench gate

baseline: setup
	$(BIN)/turnbench gate --write-baseline

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
