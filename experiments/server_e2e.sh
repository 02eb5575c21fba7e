#!/usr/bin/env bash
# End to end against a live server on mnist-5k: a legitimate client (standard) and a copycat attacker
# query `python main.py serve` over loopback, solving every batch's scrypt puzzle for real. Then the
# measured times are set beside the simulated ones for the same runs (summarize prices each log's
# costs through the same calibrator).
#   BUDGET=1024 bash experiments/server_e2e.sh      -> results/server-e2e/{standard,copycat}/log.csv, summary.csv
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET=${BUDGET:-1024}
OUT=${OUT:-results/server-e2e}
BASELINE=${BASELINE:-runs/mnist-5k/standard/log.csv}
PORT=${PORT:-8765}
mkdir -p "$OUT"
if [ ! -f "$BASELINE" ]; then bash experiments/attacks/standard.sh; fi
[ -f checkpoints/mnist-5k-victim.pt ] || python main.py train-victim --dataset mnist-5k
STATE="sqlite:///$OUT/state.db"
[ -f "$OUT/server.key" ] || python main.py serve-admin init --key_file "$OUT/server.key" --state "$STATE"
key_of() {  # a user's key, made once and kept beside the state (this is an experiment, not production)
  [ -f "$OUT/$1.apikey" ] || python main.py serve-admin add-user "$1" --state "$STATE" | head -1 > "$OUT/$1.apikey"
  umask 077; cat "$OUT/$1.apikey"
}
LEGIT=$(key_of legit)
THIEF=$(key_of thief)
python main.py serve --dataset mnist-5k --calibration "$BASELINE" --state "$STATE" --key_file "$OUT/server.key" \
  --port "$PORT" --puzzle scrypt > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 1
done
POW_API_KEY=$LEGIT python main.py extract --server "http://127.0.0.1:$PORT" --mode standard --budget "$BUDGET" \
  --out_dir "$OUT/standard"
POW_API_KEY=$THIEF python main.py extract --server "http://127.0.0.1:$PORT" --mode copycat --budget "$BUDGET" \
  --out_dir "$OUT/copycat"
python main.py summarize --runs "$OUT" --calibration "$BASELINE"
python - "$OUT" <<'PY'
import sys
import pandas as pd
out = sys.argv[1]
rows = []
for mode in ("standard", "copycat"):
    log = pd.read_csv(f"{out}/{mode}/log.csv").iloc[-1]
    sim = pd.read_csv(f"{out}/{mode}/log_pow.csv").iloc[-1]
    rows.append({"mode": mode, "queries": int(log["queries"]), "entropy_cost": log["entropy_cost"],
                 "wait_s": log["query_time_s"], "measured_pow_s": log["pow_time_s"],
                 "measured_ratio": log["total_time_s"] / log["query_time_s"],
                 "simulated_pow_s": sim["pow_time_s"], "simulated_ratio": sim["total_time_s"] / sim["query_time_s"]})
table = pd.DataFrame(rows)
table.to_csv(f"{out}/measured_vs_simulated.csv", index=False)
print(table.to_string(index=False))
m = table.set_index("mode")
print(f"copycat / standard, total time: measured {m.loc['copycat', 'wait_s'] + m.loc['copycat', 'measured_pow_s']:.1f} s / "
      f"{m.loc['standard', 'wait_s'] + m.loc['standard', 'measured_pow_s']:.1f} s")
PY
