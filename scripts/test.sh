#!/usr/bin/env bash
# The test suite on a fresh machine: install, then pytest (CPU only, about 16 minutes on 2 cores).
# Extra arguments go to pytest: `bash scripts/test.sh -m "not slow"` skips the slow tests (about 2 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m pytest -q tests "$@"
