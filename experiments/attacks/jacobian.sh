#!/usr/bin/env bash
# jacobian (Papernot et al. 2017): a seed set grown by Jacobian-based augmentation.
# Usage: [DATASET=mnist-5k] [BUDGET=N] bash experiments/attacks/jacobian.sh  (writes runs/DATASET/jacobian)
source "$(dirname "$0")/common.sh"
run jacobian
