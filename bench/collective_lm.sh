#!/usr/bin/env bash
# Issue 5 target: 2 ranks on gloo (one CPU thread each), Tiny Shakespeare, the ~10M GPT-2,
# same seed, data order and steps for every method:
#   none | topk(ratio=0.01)+int8 with error feedback | powersgd(rank=4) with error feedback
# Each run appends a row to $OUT/results.jsonl; the report table and plots follow.
# Usage: bench/collective_lm.sh            (env: STEPS=200 SEED=0 OUT=runs/bench_collective)
# The PPL target is met with SGD + momentum, judged on paired seeds (bench/RESULTS.md):
#   for S in 0 1 2 3 4; do SEED=$S OUT=runs/bench_collective_sgd \
#     EXTRA="--optimizer sgd --lr 0.1" bash bench/collective_lm.sh; done
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-/work/shared/data/text/input.txt}
OUT=${OUT:-runs/bench_collective}
STEPS=${STEPS:-200}
SEED=${SEED:-0}
EXTRA=${EXTRA:-}
COMMON=(--data "$DATA" --out "$OUT" --model 10m --max-steps "$STEPS" --seed "$SEED"
        --max-length 128 --batch-size 8 --eval-batches 0 --threads 1 --no-save)
run() {
  echo "== $*" >&2
  OMP_NUM_THREADS=1 "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 \
    -m thinwire.collective.train_lm "${COMMON[@]}" $EXTRA "$@" | tail -n 1
}
run --comm-compress none
run --comm-compress 'topk(ratio=0.01)+int8' --error-feedback
run --comm-compress 'powersgd(rank=4)' --error-feedback
"$PY" -c "import sys; from thinwire.collective.report import report_main; sys.exit(report_main(['$OUT']))"
