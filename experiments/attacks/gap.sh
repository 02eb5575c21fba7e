#!/usr/bin/env bash
# gap: active learning, the smallest gap between the stolen model's top two probabilities.
# Usage: [DATASET=mnist-5k] [BUDGET=N] bash experiments/attacks/gap.sh  (writes runs/DATASET/gap)
source "$(dirname "$0")/common.sh"
run gap
