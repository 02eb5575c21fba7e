#!/usr/bin/env bash
# mixmatch (Berthelot et al. 2019): few victim labels plus the unlabelled pool, semi-supervised.
# Usage: [DATASET=mnist-5k] [BUDGET=N] bash experiments/attacks/mixmatch.sh  (writes runs/DATASET/mixmatch)
source "$(dirname "$0")/common.sh"
run mixmatch
