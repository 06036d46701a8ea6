#!/usr/bin/env bash
# Issue 3 targets: full MNIST, 4 nodes, IID, sync, 3 epochs, same seed and steps:
# centralized, none, topk(ratio=0.01)+int8 with error feedback, the trigger policy; then
# dirichlet:0.5 with fedavg. lr 0.1 for the 256-sample global batch, warmed up linearly over
# the first 100 steps (`--lr-warmup 100`) and x0.1 in the last epoch (`--lr-schedule step`);
# all tensors in one payload per message (`--pack`).
# The trigger runs with a grad-norm threshold of 0.6 (the design's 0.15 fires on most steps
# at batch 64: a 64-sample gradient's norm moves by more than 15% from step to step) and
# `--skipped drop` (averaging the senders only; reusing a skipped node's stale gradient under
# momentum 0.9 and lr 0.1 cost 6 points of accuracy). DGC's momentum correction runs with the
# momentum on the nodes (inside the codec), so the aggregator's SGD has momentum 0.
# Usage: bash bench/sim_mnist.sh [DATA_DIR] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/mnist}
OUT=${2:-runs/bench_sim}
TW=${TW:-.venv/bin/thinwire}
# The issue-3 figures predate the sparsifier defaults (issue 13): keep their fp32 broadcast and
# gradient error feedback without momentum correction explicit.
COMMON=(--data-dir "$DATA" --nodes 4 --epochs 3 --batch-size 64 --lr 0.1 --seed 0
        --lr-schedule step --lr-warmup 100 --pack --threads 2
        --down-codec none --no-momentum-correction
        --checkpoint-every 0 --no-progress --out "$OUT")
"$TW" compare "${COMMON[@]}" --split iid --mode sync --centralized \
      --codecs 'none,topk(ratio=0.01)+int8' --error-feedback
"$TW" run "${COMMON[@]}" --split iid --mode sync --codec 'dgc(ratio=0.01)+int8' --momentum 0 \
      --run-name 'sync-dgc(ratio=0.01)+int8-m0'
"$TW" run "${COMMON[@]}" --split iid --mode sync --codec none --policy trigger --skipped drop \
      --set communication.grad_norm_threshold=0.6 --run-name sync-none-trigger0.6-drop
"$TW" run "${COMMON[@]}" --split dirichlet:0.5 --mode fedavg --local-steps 5 --codec none \
      --run-name fedavg-dirichlet0.5-none
"$TW" run "${COMMON[@]}" --split dirichlet:0.5 --mode fedavg --local-steps 5 \
      --codec 'topk(ratio=0.01)+int8' --error-feedback --run-name fedavg-dirichlet0.5-topk
