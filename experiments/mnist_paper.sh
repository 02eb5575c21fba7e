#!/usr/bin/env bash
# The paper's MNIST table beside ours: full MNIST from its four IDX files, CIFAR-10's JPEGs (grey, 28x28)
# as copycat's and knockoff's natural-image pool, every mode at the paper's budgets capped by our pool,
# DFME at 100,000 queries; then the cost-growth factorial. Resumable: run it again after a stop.
#   MNIST_DIR=../shared/data/mnist CIFAR_DIR=~/data/cifar10-jpeg bash experiments/mnist_paper.sh
#   -> results/reproduce-mnist/report.md (each mode beside the authors', verdicts, cost growth)
# The paper's DFME at 2M queries wants a GPU: add --modes dfme --dfme_budget 2000000 --device cuda and
# another OUT, or --slurm with SBATCH_GRES=gpu:1 in the environment of DIR/slurm/submit.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
MNIST_DIR=${MNIST_DIR:-../shared/data/mnist}
CIFAR_DIR=${CIFAR_DIR:-$HOME/data/cifar10-jpeg}
if [ ! -d "$CIFAR_DIR/train" ]; then
  echo "no CIFAR-10 image folder at $CIFAR_DIR/train; extract it first, e.g." >&2
  echo "  mkdir -p ~/data && tar xzf ../shared/data/cifar10-jpeg.tar.gz -C ~/data" >&2
  exit 2
fi
python3 main.py reproduce --datasets mnist --data_dir "$MNIST_DIR" --ood_pool "$CIFAR_DIR/train" \
  --out_dir "${OUT:-results/reproduce-mnist}" --jobs "${JOBS:-2}" "$@"
