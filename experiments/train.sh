#!/usr/bin/env bash
# Train victims. Usage: bash experiments/train.sh [DATASET ...]   (default: mnist-5k fashion-mnist)
# mnist, svhn and cifar10 download through torchvision when online (--data_dir data).
set -euo pipefail
cd "$(dirname "$0")/.."
datasets=("$@")
[ ${#datasets[@]} -gt 0 ] || datasets=(mnist-5k fashion-mnist)
for d in "${datasets[@]}"; do
  python3 main.py train-victim --dataset "$d" --victim_path "checkpoints/$d-victim.pt"
done
