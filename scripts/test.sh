#!/usr/bin/env bash
# The test suite on a fresh machine: install, then pytest (CPU only), in PYTEST_WORKERS processes (default 2,
# this machine's cores; pytest-xdist); an idle worker takes tests from the busy one (--dist worksteal).
# Tests marked `timed` run afterwards, one at a time. Extra arguments go to pytest (both passes):
# `bash scripts/test.sh -m "not slow"` skips the slow tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist worksteal tests --timed skip "$@"
# then the tests that time real solvers on every core, alone (pytest's 5 = none of them was selected)
python3 -m pytest -q -p no:xdist tests --timed only "$@" || [ $? -eq 5 ]
