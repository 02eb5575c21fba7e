#!/usr/bin/env bash
# Every attack mode at a small budget on mnist-5k, then the report (under 15 minutes on 2 cores):
#   bash scripts/reproduce_quick.sh [more reproduce flags]   -> results/reproduce-quick/report.md
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 main.py reproduce --quick --out_dir "${OUT:-results/reproduce-quick}" "$@"
