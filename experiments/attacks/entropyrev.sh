#!/usr/bin/env bash
# entropyrev: active learning, the pool images the stolen model is surest of.
# Usage: [DATASET=mnist-5k] [BUDGET=N] bash experiments/attacks/entropyrev.sh  (writes runs/DATASET/entropyrev)
source "$(dirname "$0")/common.sh"
run entropyrev
