#!/usr/bin/env bash
# Installs what the tests need outside Python: Debian's Chromium for the browser
# tests, axe-core (npm) for their accessibility checks, and the Firestore emulator from npm. Safe to run again; it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser tests"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

if [ -f tests/browser_deps/package.json ] && [ ! -d tests/browser_deps/node_modules/axe-core ]; then
  echo "installing axe-core from npm for the browser tests' accessibility checks"
  (cd tests/browser_deps && npm ci --no-audit --no-fund --loglevel=error)
fi

if [ -f tests/emulator/package.json ] && [ ! -d tests/emulator/node_modules ]; then
  echo "installing the Firestore emulator from npm"
  (cd tests/emulator && npm ci --no-audit --no-fund --loglevel=error)
fi

# The Cloud Tasks emulator needs protobuf below 5, Scout's clients protobuf 6 or later: it
# gets a venv of its own, installed from its own hash lock and rebuilt when the lock changes.
EMULATOR_VENV=.venv/tasks-emulator
if ! cmp -s tests/tasks_emulator/requirements.txt "$EMULATOR_VENV/requirements.txt"; then
  echo "installing the Cloud Tasks emulator"
  rm -rf "$EMULATOR_VENV"
  python3 -m venv "$EMULATOR_VENV"
  "$EMULATOR_VENV/bin/pip" install --quiet --disable-pip-version-check --require-hashes --no-deps \
    -r tests/tasks_emulator/requirements.txt
  cp tests/tasks_emulator/requirements.txt "$EMULATOR_VENV/requirements.txt"
fi
