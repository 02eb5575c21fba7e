#!/usr/bin/env bash
# How the relative calibration's ratio moves with base and budget, for the demo's two clients.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f results/demo/standard/log.csv ] || python3 main.py demo
for mode in standard copycat; do
  python3 main.py pow-time --calibration results/demo/standard/log.csv --log "results/demo/$mode/log.csv" \
    --bases 1.01,1.02,1.05,1.1 --budgets 0.25,0.5,1.0 --out "results/demo/sweep_$mode.csv"
done
