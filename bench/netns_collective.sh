#!/usr/bin/env bash
# Issue 5: the 2-rank LM runs with each rank in its own network namespace, joined by a veth
# pair shaped to 100 Mbit/s (tbf, both directions), and the step-time ratio compressed / none.
# Root only. Creates namespaces tw0/tw1 (10.77.0.1/2) and removes them on exit (trap).
# Usage: sudo bench/netns_collective.sh     (env: STEPS=30 RATE=100mbit OUT=runs/bench_netns
#        METHODS="none topk powersgd diloco" OUTER_STEPS=40)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "needs root (ip netns, tc)" >&2; exit 1; }
PY=${PY:-$(pwd)/.venv/bin/python}
DATA=${DATA:-/work/shared/data/text/input.txt}
OUT=${OUT:-runs/bench_netns}
STEPS=${STEPS:-30}
RATE=${RATE:-100mbit}
PORT=${PORT:-29561}
NS0=tw0; NS1=tw1

cleanup() {
  ip netns pids "$NS0" 2>/dev/null | xargs -r kill 2>/dev/null || true
  ip netns pids "$NS1" 2>/dev/null | xargs -r kill 2>/dev/null || true
  ip netns del "$NS0" 2>/dev/null || true
  ip netns del "$NS1" 2>/dev/null || true
}
trap cleanup EXIT INT TERM
cleanup
ip netns add "$NS0"; ip netns add "$NS1"
ip link add tw-veth0 type veth peer name tw-veth1
ip link set tw-veth0 netns "$NS0"; ip link set tw-veth1 netns "$NS1"
ip -n "$NS0" addr add 10.77.0.1/24 dev tw-veth0; ip -n "$NS1" addr add 10.77.0.2/24 dev tw-veth1
for ns in "$NS0:tw-veth0" "$NS1:tw-veth1"; do
  n=${ns%%:*}; dev=${ns##*:}
  ip -n "$n" link set lo up; ip -n "$n" link set "$dev" up
  ip netns exec "$n" tc qdisc add dev "$dev" root tbf rate "$RATE" burst 32kbit latency 400ms
done

mkdir -p "$OUT"
# tokenizer and token cache once, outside the shaped link
"$PY" -m thinwire.collective.train_lm --data "$DATA" --out "$OUT" --model 10m --max-steps 1 \
  --no-save --run-name prepare --threads 2 >/dev/null
TOK="$OUT/tokenizer-$(basename "${DATA%.*}")-v8192"
COMMON=(--data "$DATA" --out "$OUT" --tokenizer "$TOK" --model 10m --max-steps "$STEPS"
        --max-length 128 --batch-size 8 --threads 1 --no-save --grad-error-every 0
        --eval-batches 4)
pair() {  # one run: rank 0 in tw0, rank 1 in tw1
  local name=$1; shift
  for r in 0 1; do
    ns=tw$r
    ip netns exec "$ns" env RANK=$r WORLD_SIZE=2 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 \
      MASTER_ADDR=10.77.0.1 MASTER_PORT=$PORT GLOO_SOCKET_IFNAME=tw-veth$r OMP_NUM_THREADS=1 \
      "$PY" -m thinwire.collective.train_lm "${COMMON[@]}" --run-name "$name" "$@" \
      > "$OUT/$name.rank$r.log" 2>&1 &
  done
  wait
  PORT=$((PORT + 1))
}
grep -v '"run_name": "prepare"' "$OUT/results.jsonl" > "$OUT/results.tmp" || true
mv "$OUT/results.tmp" "$OUT/results.jsonl"
METHODS=${METHODS:-"none topk powersgd"}  # and/or diloco (H=$OUTER_STEPS, int8)
OUTER_STEPS=${OUTER_STEPS:-40}
for m in $METHODS; do
  case $m in
    none) pair "netns-none" --comm-compress none ;;
    topk) pair "netns-topk-int8-ef" --comm-compress 'topk(ratio=0.01)+int8' --error-feedback ;;
    powersgd) pair "netns-powersgd4-ef" --comm-compress 'powersgd(rank=4)' --error-feedback ;;
    diloco) pair "netns-diloco-int8-H$OUTER_STEPS" --comm-compress int8 \
              --outer-steps "$OUTER_STEPS" ;;
    *) echo "unknown method $m (none topk powersgd diloco)" >&2; exit 2 ;;
  esac
done
"$PY" - "$OUT/results.jsonl" "$RATE" <<'PYEOF'
import json, sys
rows = {r["run_name"]: r for r in map(json.loads, open(sys.argv[1])) if r["run_name"].startswith("netns")}
base = rows["netns-none"]["step_time_ms_mean"] if "netns-none" in rows else float("nan")
print(f"link {sys.argv[2]} (tbf), 2 ranks in two network namespaces")
for name, r in rows.items():
    print(f"{name:22s} step {r['step_time_ms_mean']:8.0f} ms (p90 {r['step_time_ms_p90']:.0f})"
          f"  ratio vs none {r['step_time_ms_mean'] / base:5.2f}  compression {r['compression_ratio']:.1f}x"
          f"  comm {100 * (r['comm_ratio'] or 0):.0f}%")
PYEOF
