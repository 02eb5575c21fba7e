#!/usr/bin/env bash
# The paper's grid at its budgets on every dataset available offline (mnist-5k, Fashion-MNIST where
# installed, MNIST/SVHN/CIFAR10 where their files are in --data_dir), SEEDS seeds, JOBS runs at a time:
#   SEEDS=3 JOBS=2 bash scripts/reproduce_full.sh          -> results/reproduce/report.md
# Days of CPU time at the paper's budgets: see the README for running it on SLURM (--slurm).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 main.py reproduce --out_dir "${OUT:-results/reproduce}" --seeds "${SEEDS:-1}" --jobs "${JOBS:-1}" "$@"
