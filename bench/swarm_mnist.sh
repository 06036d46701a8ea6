#!/usr/bin/env bash
# Issue 11 targets: full MNIST, 4 peers, IID, sync, 3 epochs, seed 0, the flags of
# bench/sim_mnist.sh's `none` run. The simulator is the reference; the swarm runs over ipc://
# and tcp:// (one torch thread per peer), then over ipc:// with node-3 killed (kill -9) in
# epoch 2. Targets: swarm accuracy within 0.15 points of the simulator's with the same bytes
# per update (bytes_update_wire = the simulator's bytes_up_wire); swarm samples/s (all peers'
# samples over the slowest peer's time in steps, as the simulator counts) >= 0.7 of the
# simulator's; after the kill the other three finish >= 98.5%.
# Usage: bash bench/swarm_mnist.sh [DATA_DIR] [OUT] [CASES]   CASES: any of sim ipc tcp kill
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/mnist}
OUT=${2:-runs/bench_swarm}
CASES=${3:-sim ipc tcp kill}
TW=${TW:-.venv/bin/thinwire}
PY=${PY:-.venv/bin/python}
COMMON=(--data-dir "$DATA" --nodes 4 --epochs 3 --batch-size 64 --lr 0.1 --seed 0
        --lr-schedule step --lr-warmup 100 --pack --split iid --mode sync --codec none
        --checkpoint-every 0 --no-progress --out "$OUT")
for case in $CASES; do
  case $case in
    sim) "$TW" run "${COMMON[@]}" --threads 2 --run-name sim-none ;;
    ipc|tcp) "$TW" swarm "${COMMON[@]}" --threads 1 --transport "$case" \
               --run-name "swarm-$case-none" ;;
    kill)
      "$TW" swarm "${COMMON[@]}" --threads 1 --transport ipc --run-name swarm-ipc-kill &
      launcher=$!
      log="$OUT/swarm-ipc-kill/training.log"
      until [ -f "$log" ] && grep -q "\] epoch 1:" "$log"; do sleep 1; done
      sleep 10  # well inside epoch 2
      pid=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['pids'][3])" \
            "$OUT/swarm-ipc-kill/peers.json")
      kill -9 "$pid"
      echo "killed node-3 (pid $pid)"
      wait "$launcher" ;;
  esac
done
"$PY" - "$OUT/results.jsonl" <<'PY'
import json, sys
rows = {r["run_name"]: r for r in map(json.loads, open(sys.argv[1]))}
sim = rows.get("sim-none")
for name, r in rows.items():
    line = (f"{name:16} acc {100 * r['test_accuracy']:.2f}  samples/s {r['samples_per_s']:.0f}"
            f"  update bytes {r.get('bytes_update_wire', r['bytes_up_wire'])}")
    if r["runtime"] == "swarm":
        line += (f"  socket bytes {r['bytes_socket_total']}  agree {r['models_agree']}"
                 f"  left {[(x['node'], x['step']) for x in r['peers_left']]}")
        if sim:
            line += (f"  | vs sim: acc {100 * (r['test_accuracy'] - sim['test_accuracy']):+.2f}"
                     f" pts, speed x{r['samples_per_s'] / sim['samples_per_s']:.2f}, same update"
                     f" bytes: {r['bytes_update_wire'] == sim['bytes_up_wire']}")
    print(line)
PY
