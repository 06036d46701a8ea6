#!/usr/bin/env bash
# Issue 12 target: under AdamW, local steps + a compressed pseudo-gradient (DiLoCo) against
# per-step AdamW DDP with `none`: the ~10M GPT-2, Tiny Shakespeare, 2 ranks on gloo (one CPU
# thread each), the same seed, data order, steps and tokens. Each run appends a row to
# $OUT/results.jsonl; the paired table follows.
# Usage: SEEDS="0 1 2" bash bench/collective_diloco.sh
#   env: STEPS=200 H=40 CODEC=int8 OUT=runs/bench_diloco EXTRA="..." BASELINE=1 POWERSGD=0
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-/work/shared/data/text/input.txt}
OUT=${OUT:-runs/bench_diloco}
STEPS=${STEPS:-200}
SEEDS=${SEEDS:-0}
H=${H:-40}
CODEC=${CODEC:-int8}
EXTRA=${EXTRA:-}
run() {
  echo "== $*" >&2
  OMP_NUM_THREADS=1 "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 \
    -m thinwire.collective.train_lm --data "$DATA" --out "$OUT" --model 10m \
    --max-steps "$STEPS" --max-length 128 --batch-size 8 --eval-batches 0 --threads 1 \
    --no-save --cache-dir "$OUT/cache" $EXTRA "$@" | tail -n 1 | cut -c1-200
}
for S in $SEEDS; do
  if [ "${BASELINE:-1}" = 1 ]; then run --seed "$S" --comm-compress none; fi
  run --seed "$S" --comm-compress "$CODEC" --outer-steps "$H"
  if [ "${POWERSGD:-0}" = 1 ]; then
    run --seed "$S" --comm-compress 'powersgd(rank=4)' --error-feedback
  fi
done
"$PY" bench/diloco_table.py "$OUT/results.jsonl"
