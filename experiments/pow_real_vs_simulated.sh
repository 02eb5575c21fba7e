#!/usr/bin/env bash
# Does simulated PoW time match really solving the puzzles? Same copycat run, --pow simulated vs real.
# Usage: bash experiments/pow_real_vs_simulated.sh [PUZZLE]   (default: sha256)
set -euo pipefail
cd "$(dirname "$0")/.."
puzzle=${1:-sha256}
out=results/pow_real_vs_simulated
python3 main.py extract --budget 512 --out_dir "$out/standard" --fresh
for pow in simulated real; do
  python3 main.py extract --mode copycat --budget 512 --out_dir "$out/$pow" --fresh \
    --calibration "$out/standard/log.csv" --max_factor 20 --pow "$pow" --puzzle "$puzzle" --pow_subs 4
done
python3 -c "
from pow.pricing import compare_real_simulated
r = compare_real_simulated('$out/simulated/log.csv', '$out/real/log.csv', '$out/real/params.json')
print(' '.join(f'{k}={v:.3f}' for k, v in r.items()))"
