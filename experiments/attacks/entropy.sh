#!/usr/bin/env bash
# entropy: active learning, the pool images the stolen model is least sure of.
# Usage: [DATASET=mnist-5k] [BUDGET=N] bash experiments/attacks/entropy.sh  (writes runs/DATASET/entropy)
source "$(dirname "$0")/common.sh"
run entropy
