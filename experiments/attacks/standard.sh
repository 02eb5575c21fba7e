#!/usr/bin/env bash
# standard: a legitimate user, random in-distribution queries; the baseline every other attack is priced against.
# Usage: [DATASET=mnist-5k] [BUDGET=N] bash experiments/attacks/standard.sh  (writes runs/DATASET/standard)
source "$(dirname "$0")/common.sh"
run standard
