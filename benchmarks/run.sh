#!/usr/bin/env bash
# All benchmarks, one command: bash benchmarks/run.sh  (results in benchmarks/results/)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m benchmarks.bench_privacy
python3 -m benchmarks.bench_pow
python3 -m benchmarks.bench_teachers
python3 -m benchmarks.bench_server
python3 -m benchmarks.bench_hoard
# the split-proof price over every split, both datasets (about an hour): bash benchmarks/bench_sybil.sh
