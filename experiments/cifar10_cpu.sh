#!/usr/bin/env bash
# CIFAR-10 at CPU scale, from its JPEG folder: the paper's small CNN (mnistnet on 32x32x3) as victim and
# copy, 30 victim epochs (under 30 minutes on 2 cores), standard, copycat and knockoff at 2,000 queries
# with photo crops as the pool; the report sets each beside the authors' CIFAR10 row.
#   CIFAR_DIR=~/data/cifar10-jpeg bash experiments/cifar10_cpu.sh   -> results/reproduce-cifar10-cpu/report.md
# The paper's scale (ResNet-34-8x victim, ResNet-18 copy, 200 epochs, 10,000 queries) wants a GPU:
#   python3 main.py reproduce --datasets cifar10 --data_dir DIR --modes copycat,knockoff --device cuda \
#     --out_dir results/reproduce-cifar10
set -euo pipefail
cd "$(dirname "$0")/.."
CIFAR_DIR=${CIFAR_DIR:-$HOME/data/cifar10-jpeg}
if [ ! -d "$CIFAR_DIR/train" ]; then
  echo "no CIFAR-10 image folder at $CIFAR_DIR/train; extract it first, e.g." >&2
  echo "  mkdir -p ~/data && tar xzf ../shared/data/cifar10-jpeg.tar.gz -C ~/data" >&2
  exit 2
fi
python3 main.py reproduce --datasets cifar10 --data_dir "$CIFAR_DIR" --modes copycat,knockoff --budget 2000 \
  --victim_arch mnistnet --stolen_arch mnistnet --victim_epochs 30 --victim_dir checkpoints/cpu \
  --out_dir "${OUT:-results/reproduce-cifar10-cpu}" --jobs "${JOBS:-1}" "$@"
