#!/usr/bin/env bash
# jacobiantr: jacobian with the step sign flipped every few generations.
# Usage: [DATASET=mnist-5k] [BUDGET=N] bash experiments/attacks/jacobiantr.sh  (writes runs/DATASET/jacobiantr)
source "$(dirname "$0")/common.sh"
run jacobiantr
