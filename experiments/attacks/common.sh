# Shared by experiments/attacks/*.sh (source it; do not run it). Settings come from the environment:
#   DATASET  mnist-5k (default) or fashion-mnist, mnist, svhn, cifar10
#   BUDGET   queries per attack (default: 1024 on mnist-5k, whose attacker pool holds 1,500 images; else 2000)
#   RUNS     where the runs go (default: runs/DATASET, one sub-folder per mode)
# Every run resumes where it stopped, and a finished run is not redone: run the scripts again freely.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DATASET=${DATASET:-mnist-5k}
if [ "$DATASET" = mnist-5k ]; then BUDGET=${BUDGET:-1024}; else BUDGET=${BUDGET:-2000}; fi
RUNS=${RUNS:-runs/$DATASET}
VICTIM=${VICTIM:-checkpoints/$DATASET-victim.pt}
[ -f "$VICTIM" ] || python3 main.py train-victim --dataset "$DATASET" --victim_path "$VICTIM"

# run MODE [extra extract flags]: one attack, priced against the standard baseline as it goes
run() {
  local mode=$1; shift
  local cal=()
  if [ "$mode" != standard ]; then
    bash experiments/attacks/standard.sh
    cal=(--calibration "$RUNS/standard/log.csv")
  fi
  python3 main.py extract --dataset "$DATASET" --mode "$mode" --budget "$BUDGET" --victim_path "$VICTIM" \
    --out_dir "$RUNS/$mode" "${cal[@]}" "$@"
}
