# Two commands: `make run` (demo service on SQLite) and `make test` (the whole suite).
# Both create .venv when it is missing and reinstall only when pyproject.toml changed.

PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test lint format bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/nextbest demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The scaling benchmark (under 15 minutes on 2 cores): results, tables and plots in bench/results/.
# It loads the server with wrk (Debian's package). bench/ingest.py, bench/decide.py, bench/rules.py,
# bench/experiments.py and bench/pages.py are the finer benchmarks, run on their own.
bench: $(STAMP)
	@command -v wrk >/dev/null || apt-get install -y wrk || \
		{ echo "bench needs wrk: apt-get install -y wrk"; exit 1; }
	$(BIN)/python bench/suite.py

clean:
	rm -rf $(VENV) nextbest.db nextbest.db-wal nextbest.db-shm
