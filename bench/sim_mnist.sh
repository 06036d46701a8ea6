#!/usr/bin/env bash
# Issue 3 targets: full MNIST, 4 nodes, IID, sync, 3 epochs, same seed and steps:
# centralized, none, topk(ratio=0.01)+int8 with error feedback, the trigger policy; then
# dirichlet:0.5 with fedavg (lr 0.1 for the 256-sample global batch). Usage: bash bench/sim_mnist.sh [DATA_DIR] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/mnist}
OUT=${2:-runs/bench_sim}
TW=${TW:-.venv/bin/thinwire}
COMMON=(--data-dir "$DATA" --nodes 4 --epochs 3 --batch-size 64 --lr 0.1 --seed 0
        --checkpoint-every 0 --no-progress --out "$OUT")
"$TW" compare "${COMMON[@]}" --split iid --mode sync --centralized \
      --codecs 'none,topk(ratio=0.01)+int8' --error-feedback
"$TW" run "${COMMON[@]}" --split iid --mode sync --codec none --policy trigger
"$TW" run "${COMMON[@]}" --split dirichlet:0.5 --mode fedavg --local-steps 5 --codec none \
      --run-name fedavg-dirichlet0.5-none
"$TW" run "${COMMON[@]}" --split dirichlet:0.5 --mode fedavg --local-steps 5 \
      --codec 'topk(ratio=0.01)+int8' --error-feedback --run-name fedavg-dirichlet0.5-topk
