#!/usr/bin/env bash
# knockoff (Orekondy et al. 2019): OOD images, soft labels; SAMPLING=random|adaptive (default adaptive).
# Usage: [DATASET=mnist-5k] [BUDGET=N] bash experiments/attacks/knockoff.sh  (writes runs/DATASET/knockoff)
source "$(dirname "$0")/common.sh"
run knockoff --sampling "${SAMPLING:-adaptive}"
