#!/usr/bin/env bash
# Installs what the project needs (idempotent). Debian packages are optional extras:
# dataset-fashion-mnist (full Fashion-MNIST offline) and hashcash (the reference PoW tool).
set -uo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  if ! dpkg -s dataset-fashion-mnist hashcash >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist hashcash) >/dev/null 2>&1 \
      || echo "note: apt packages not installed; Fashion-MNIST tests will be skipped" >&2
  fi
fi
python3 -m pip install -q -r requirements.txt || { echo "pip install -r requirements.txt failed" >&2; exit 1; }
