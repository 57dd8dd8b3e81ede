#!/usr/bin/env bash
# Installs what the tests need outside Python: Debian's Chromium for the browser
# tests and the Firestore emulator from npm. Safe to run again; it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser tests"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

if [ -f tests/emulator/package.json ] && [ ! -d tests/emulator/node_modules ]; then
  echo "installing the Firestore emulator from npm"
  (cd tests/emulator && npm ci --no-audit --no-fund --loglevel=error)
fi
