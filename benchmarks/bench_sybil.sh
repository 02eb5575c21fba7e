#!/usr/bin/env bash
# The split-proof price against every split (issue 14's targets): copycat, knockoff (random and adaptive)
# and dfme, 8,192 queries each, split over 1..1024 API keys and batch sizes 1..256, against a legitimate
# user under the same splits; mnist-5k and Fashion-MNIST; in-process, then a smaller grid over HTTP.
# Results: benchmarks/results/sybil/DATASET-*.csv (+ .png, .params.json). About an hour on 2 cores; a rerun
# skips the tables already written and reuses the recorded query streams.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/results/sybil
mkdir -p "$OUT"
BUDGET=${BUDGET:-8192}
for D in mnist-5k fashion-mnist; do
  if [ "$D" = fashion-mnist ] && ! python3 -c "from data.registry import load_splits; load_splits('$D', 'data')" \
      >/dev/null 2>&1; then
    echo "skipping $D: not available offline (apt-get install dataset-fashion-mnist)" >&2; continue
  fi
  [ -f "checkpoints/$D-victim.pt" ] || python3 main.py train-victim --dataset "$D"
  python3 main.py extract --dataset "$D" --mode standard --budget 1024 --out_dir "$OUT/$D-baseline" >/dev/null  # resumes
  COMMON=(--dataset "$D" --calibration "$OUT/$D-baseline/log.csv" --budget "$BUDGET" --stolen_epochs 1
          --sybil_runs "$OUT/streams")
  [ -f "$OUT/$D-modes.csv" ] || python3 main.py sybil "${COMMON[@]}" --modes copycat,knockoff,dfme --accounts 1,16,256,1024 \
      --batches 1,16,64,256 --out "$OUT/$D-modes.csv"
  [ -f "$OUT/$D-knockoff-adaptive.csv" ] || python3 main.py sybil "${COMMON[@]}" --modes knockoff --sampling adaptive --accounts 1,16,256,1024 \
      --batches 1,16,64,256 --out "$OUT/$D-knockoff-adaptive.csv"
  OTHER=$([ "$D" = mnist-5k ] && echo fashion-mnist || echo mnist-5k)
  [ -f "$OUT/$D-copycat-$OTHER.csv" ] || python3 main.py sybil "${COMMON[@]}" --modes copycat --ood_pool "$OTHER" --accounts 1,16,256,1024 \
      --batches 1,16,64,256 --out "$OUT/$D-copycat-$OTHER.csv" || echo "note: pool $OTHER unavailable" >&2
  [ -f "$OUT/$D-http.csv" ] || python3 main.py sybil "${COMMON[@]}" --budget 1024 --modes copycat --accounts 1,16 --batches 16,64 \
      --server local --out "$OUT/$D-http.csv"
done
