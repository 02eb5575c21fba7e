#!/usr/bin/env bash
# Which cost measure separates attackers from legitimate users? Trains the two victims if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
for d in mnist-5k fashion-mnist; do
  [ -f "checkpoints/$d-victim.pt" ] || python3 main.py train-victim --dataset "$d"
done
python3 main.py cost-separation --datasets mnist-5k,fashion-mnist "$@"
