#!/usr/bin/env bash
# The test suite on a fresh machine: install, then pytest (CPU only), in PYTEST_WORKERS processes (default 2,
# this machine's cores; pytest-xdist); an idle worker takes tests from the busy one (--dist worksteal).
# Tests marked `timed` run afterwards, one at a time. Extra arguments go to pytest (both passes):
# `bash scripts/test.sh -m "not slow"` skips the slow tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# pytest exits 5 when a pass selects no test: fine for one pass, not for both
rest=0; python3 -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist worksteal tests --timed skip "$@" || rest=$?
# then the tests that time real solvers on every core, alone (-n 0 unless the arguments say otherwise)
timed=0; python3 -m pytest -q -n 0 tests --timed only "$@" || timed=$?
for rc in "$rest" "$timed"; do
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi
done
if [ "$rest" -eq 5 ] && [ "$timed" -eq 5 ]; then exit 5; fi
