#!/usr/bin/env bash
# The main job on a fresh machine: install, then the end-to-end demo on mnist-5k (a few minutes on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 main.py demo "$@"
