#!/usr/bin/env bash
# Every attack on one dataset, priced against standard, then one table and figure:
#   [DATASET=mnist-5k] bash experiments/results.sh   ->  runs/DATASET/summary.csv, accuracy_vs_time.png
# Resumable: finished runs are skipped, interrupted ones continue.
set -euo pipefail
cd "$(dirname "$0")/.."
for mode in standard copycat entropy entropyrev gap worstcase knockoff jacobian jacobiantr mixmatch dfme; do
  bash "experiments/attacks/$mode.sh"
done
python3 main.py summarize --runs "${RUNS:-runs/${DATASET:-mnist-5k}}"
