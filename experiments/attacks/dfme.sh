#!/usr/bin/env bash
# dfme (Truong et al. 2021): data-free, a generator and forward differences; DFME_BUDGET (default 100000).
# Usage: [DATASET=mnist-5k] [BUDGET=N] bash experiments/attacks/dfme.sh  (writes runs/DATASET/dfme)
source "$(dirname "$0")/common.sh"
run dfme --budget "${DFME_BUDGET:-100000}" --query_batch 256 --batches_per_round 70  # the later --budget wins
