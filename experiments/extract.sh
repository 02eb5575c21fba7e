#!/usr/bin/env bash
# standard (the legitimate baseline) then every other mode, priced against it.
# Usage: bash experiments/extract.sh DATASET BUDGET   (default: mnist-5k 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
d=${1:-mnist-5k}; budget=${2:-1024}
python3 main.py extract --dataset "$d" --mode standard --budget "$budget" --out_dir "results/$d-standard"
for mode in copycat entropy entropyrev gap worstcase knockoff jacobian jacobiantr; do
  python3 main.py extract --dataset "$d" --mode "$mode" --budget "$budget" --out_dir "results/$d-$mode" \
    --calibration "results/$d-standard/log.csv"
done
