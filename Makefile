# Scout: `make run` starts the app on the embedded defaults; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	SCOUT_DEV=1 $(BIN)/gunicorn notifier:app

# ruff and mypy, configured in pyproject.toml; `make test` runs this first.
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	bash scripts/test-deps.sh
	$(BIN)/python -m pytest

# The poll cycle at 1,000, 10,000 and 50,000 users (BENCH_SIZES=1000,10000 for fewer), then
# the paced sends to the providers (issue 10's bench, once it is in).
bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench.poll_cycle
	if [ -f bench/paced_lows.py ]; then $(BIN)/python -m bench.paced_lows; fi

clean:
	rm -rf $(VENV) instance .pytest_cache .ruff_cache .mypy_cache test-artifacts
