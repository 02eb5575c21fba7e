#!/usr/bin/env bash
# All benchmarks, one command: bash benchmarks/run.sh  (results in benchmarks/results/)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 benchmarks/bench_privacy.py
python3 benchmarks/bench_pow.py
python3 benchmarks/bench_teachers.py
python3 benchmarks/bench_server.py
python3 benchmarks/bench_hoard.py
# the split-proof price over every split, both datasets (about an hour): bash benchmarks/bench_sybil.sh
