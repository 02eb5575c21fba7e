#!/usr/bin/env bash
# The test suite on a fresh machine: install, then pytest (CPU only, about 16 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m pytest -q tests "$@"
