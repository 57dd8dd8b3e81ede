# Scout: `make run` starts the app on the embedded defaults; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# The locked trees: every package pinned with its hashes, resolved by `make lock` from the
# pins in requirements.in and requirements-dev.in. Installs refuse anything not in the lock.
PIP_LOCKED := $(BIN)/pip install --quiet --require-hashes --no-deps
# `make lock` resolves against the default package index alone, whatever this machine's pip settings add.
PIP_COMPILE := env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL PIP_CONFIG_FILE=/dev/null \
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
	--no-emit-find-links

.PHONY: run test lint lock bench replay clean

$(BIN)/python:
	$(PYTHON) scripts/check-python.py
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(PIP_LOCKED) -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(PIP_LOCKED) -r requirements-dev.txt
	touch $(VENV)/.installed $@

# Re-resolve the locks after changing a pin in requirements.in, requirements-dev.in,
# requirements-replay.in or tests/tasks_emulator/requirements.in.
# Already-locked versions are kept unless a pin moves; `make lock UPGRADE=1` takes the newest allowed.
lock: $(VENV)/.installed-dev
	$(PIP_COMPILE) $(if $(UPGRADE),--upgrade) --output-file requirements.txt requirements.in
	$(PIP_COMPILE) $(if $(UPGRADE),--upgrade) --output-file requirements-dev.txt requirements-dev.in
	$(PIP_COMPILE) $(if $(UPGRADE),--upgrade) --output-file requirements-replay.txt requirements-replay.in
	$(PIP_COMPILE) $(if $(UPGRADE),--upgrade) --output-file tests/tasks_emulator/requirements.txt tests/tasks_emulator/requirements.in

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
# the paced sends to the providers: 500 users low at once against 3 calls/s (bench/paced_lows).
bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench.poll_cycle
	$(BIN)/python -m bench.paced_lows

# simulated type 1 days (simglucose) through the real poller: calls, texts and hypos caught,
# beside Nightscout's simple alarms; REPLAY_DAYS days per patient (default 2). simglucose
# needs a setuptools older than the dev lock's, so the replay has a venv of its own.
REPLAY_VENV := $(VENV)/replay
$(REPLAY_VENV)/.installed: requirements-replay.txt | $(BIN)/python
	rm -rf $(REPLAY_VENV)
	$(PYTHON) -m venv $(REPLAY_VENV)
	$(REPLAY_VENV)/bin/pip install --quiet --require-hashes --no-deps -r requirements-replay.txt
	touch $@

replay: $(REPLAY_VENV)/.installed
	$(REPLAY_VENV)/bin/python -m bench.replay

clean:
	rm -rf $(VENV) instance .pytest_cache .ruff_cache .mypy_cache test-artifacts
