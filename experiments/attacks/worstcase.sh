#!/usr/bin/env bash
# worstcase: knows the defence, sends the queries it expects to be cheapest first.
# Usage: [DATASET=mnist-5k] [BUDGET=N] bash experiments/attacks/worstcase.sh  (writes runs/DATASET/worstcase)
source "$(dirname "$0")/common.sh"
run worstcase
