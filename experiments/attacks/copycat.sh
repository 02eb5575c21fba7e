#!/usr/bin/env bash
# copycat (Correia-Silva et al. 2018): natural out-of-distribution images, labelled by the victim.
# Usage: [DATASET=mnist-5k] [BUDGET=N] bash experiments/attacks/copycat.sh  (writes runs/DATASET/copycat)
source "$(dirname "$0")/common.sh"
run copycat
