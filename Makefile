PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint bench bench-quick demo chaos clean

$(BIN)/python:
	PYTHON=$(PYTHON) scripts/system-packages.sh
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,demo]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# `make demo ARGS=--once` runs the scenario once and exits (CI does).
demo: $(STAMP)
	$(BIN)/checkin demo $(ARGS)

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m bench --quick

# The full chaos run (60 randomised trials of faults and kills against the real
# system) and the sync protocol's model-based test with many more examples.
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos --trials 60
	CHECKIN_MODEL_EXAMPLES=2000 $(BIN)/python -m pytest -q tests/test_sync_model.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
