#!/usr/bin/env bash
# Issue 11, "Measurement truth": `thinwire peer` processes, each in its own network namespace,
# exchange updates all-to-all over tcp:// through a bridge whose links are shaped to RATE with
# tbf (no netem). Measured step time per codec versus the link model's prediction for the bytes
# the peers actually sent: compute-only step time plus the predicted communication time.
# Target: measured within 15% of predicted.
#
# Topology (nothing in the root namespace): a hub namespace holds bridge `twbr`; peer i lives in
# namespace tws<i> with 10.78.0.<i+1>/24 on veth `p<i>`, whose other end `h<i>` is a bridge port
# in the hub. When shaped, each peer's link is limited in both directions:
#   upload   (peer egress):  tbf on p<i> inside tws<i>
#   download (peer ingress): tbf on h<i> inside the hub (what the bridge forwards to peer i)
# so every peer has RATE up and RATE down, full duplex, behind a non-blocking switch.
#
# Paired measurement: one run per codec (full MNIST, STEPS steps of epoch 1), during which the
# shaping is switched on and off every PHASE seconds (`tc qdisc add/del`, times in
# <run>.phases). Shared CPUs make the compute time drift by tens of percent between separate
# runs, so compute-only (unshaped phases) and shaped step times come from the same run and the
# same minutes. A step time is the wall time between a peer's consecutive `step` events in
# events.jsonl (every 6th step), counted only when the interval lies wholly inside one phase
# and starts MARGIN s after the change; the mean over peers.
#
# Prediction (per step, from each peer's counted socket bytes, `--bandwidth RATE` link model):
#   up_i   = 8 * sent_i / RATE      sent_i: bytes peer i handed to its sockets per step
#   down_i = 8 * recv_i / RATE      (its update to the N-1 others, envelopes, ZMTP framing, acks)
#   comm   = max_i max(up_i, down_i) = (N-1) * 8 * B / RATE for equal updates of B bytes
#   pred   = compute-only step time + comm
# All peers send at once after their backward pass, so a peer's upload and its download run at
# the same time on separate shapers, and the bridge forwards frame by frame (no store-and-
# forward of whole messages): the exchange takes max(up, down), not up + down. That is the
# library's LinkModel.exchange_time, which the peers' own `comm_time_s_sim` also uses (over the
# update bytes only); the star formula (LinkModel.step_time: slowest upload, then slowest
# download) is printed beside it for comparison. TCP/IP/Ethernet headers (66 bytes per
# 1448-byte segment at MTU 1500, +4.6%) are in neither: the link model counts application
# bytes; the pr+hdr column shows the duplex prediction with them.
#
# Root only. Creates namespaces twshub, tws0..tws<N-1> and removes them on exit (trap).
# Usage: sudo bench/netns_swarm.sh
#   env: N=3 RATE=100mbit STEPS=300 PHASE=4 MARGIN=0.5 DATA=/work/shared/data/mnist
#        CODECS="none int8 topk(ratio=0.01)+int8" OUT=runs/bench_netns_swarm PORT=29700
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "needs root (ip netns, tc)" >&2; exit 1; }
PY=${PY:-$(pwd)/.venv/bin/python}
TW=${TW:-$(pwd)/.venv/bin/thinwire}
N=${N:-3}
RATE=${RATE:-100mbit}
STEPS=${STEPS:-300}
DATA=${DATA-/work/shared/data/mnist}
OUT=${OUT:-runs/bench_netns_swarm}
PORT=${PORT:-29700}
CODECS=${CODECS:-"none int8 topk(ratio=0.01)+int8"}
PHASE=${PHASE:-4}    # seconds per shaped / unshaped phase
MARGIN=${MARGIN:-0.5}  # seconds after each change before step intervals count
HUB=twshub
NSS=(); for ((i = 0; i < N; i++)); do NSS+=("tws$i"); done

cleanup() {
  for ns in "${NSS[@]}"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
  done
  sleep 0.2
  for ns in "${NSS[@]}" "$HUB"; do ip netns del "$ns" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM
cleanup

ip netns add "$HUB"
ip -n "$HUB" link set lo up
ip -n "$HUB" link add twbr type bridge
ip -n "$HUB" link set twbr up
PEERS=""
for ((i = 0; i < N; i++)); do
  ns=${NSS[$i]}
  ip netns add "$ns"
  ip -n "$HUB" link add "h$i" type veth peer name "p$i" netns "$ns"
  ip -n "$HUB" link set "h$i" master twbr
  ip -n "$HUB" link set "h$i" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "10.78.0.$((i + 1))/24" dev "p$i"
  ip -n "$ns" link set "p$i" up
done

shape() {  # on|off: tbf at RATE on both ends of every peer's veth
  for ((i = 0; i < N; i++)); do
    for end in "${NSS[$i]}:p$i" "$HUB:h$i"; do
      tc -n "${end%%:*}" qdisc del dev "${end##*:}" root 2>/dev/null || true
      if [ "$1" = on ]; then
        tc -n "${end%%:*}" qdisc add dev "${end##*:}" root tbf rate "$RATE" burst 32kbit \
          latency 400ms
      fi
    done
  done
}

mkdir -p "$OUT"
COMMON=(--max-steps "$STEPS" --epochs 1 --threads 1 --batch-size 64 --pack --seed 0
        --checkpoint-every 0 --transport tcp --bandwidth "$RATE" --no-progress --out "$OUT")
[ -n "$DATA" ] && COMMON+=(--data-dir "$DATA")

alive() { for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }

swarm() {  # one run: peer i in namespace tws<i>, shaping toggled every PHASE s; name, flags
  local name=$1 peers="" pids=() rc=0 state=on t0 t1; shift
  for ((i = 0; i < N; i++)); do peers+="${peers:+,}tcp://10.78.0.$((i + 1)):$PORT"; done
  rm -rf "${OUT:?}/$name"
  : > "$OUT/$name.phases"
  shape off
  for ((i = 0; i < N; i++)); do
    ip netns exec "${NSS[$i]}" env OMP_NUM_THREADS=1 "$TW" peer --id "$i" --peers "$peers" \
      "${COMMON[@]}" --run-name "$name" "$@" > "$OUT/$name.peer$i.log" 2>&1 &
    pids+=($!)
  done
  while alive "${pids[@]}"; do  # phases: "on|off <change began> <change done>" (unix time)
    t0=$(date +%s.%N); shape "$state"; t1=$(date +%s.%N)
    echo "$state $t0 $t1" >> "$OUT/$name.phases"
    for ((k = 0; k < PHASE * 4; k++)); do alive "${pids[@]}" && sleep 0.25; done
    [ "$state" = on ] && state=off || state=on
  done
  for p in "${pids[@]}"; do wait "$p" || rc=$?; done
  [ "$rc" = 0 ] || { echo "$name: a peer failed (exit $rc), see $OUT/$name.peer*.log" >&2; exit 1; }
  PORT=$((PORT + N))
}

echo "load before: $(uptime)"
START=$(date +%s)
for codec in $CODECS; do
  tag=$(echo "$codec" | tr -c 'a-z0-9\n' '-' | sed 's/--*/-/g; s/-$//')
  ef=(); [ "$codec" != none ] && ef=(--error-feedback)
  swarm "netns-$tag" --codec "$codec" "${ef[@]}"
  echo "$codec done ($(( $(date +%s) - START ))s)"
done
echo "load after: $(uptime)"

"$PY" - "$OUT" "$RATE" "$N" "$MARGIN" $CODECS <<'PYEOF'
import json, re, sys
from pathlib import Path
from thinwire.exchange.link import LinkModel

out, rate, n, margin, codecs = (Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]),
                                float(sys.argv[4]), sys.argv[5:])
link = LinkModel.build(n, rate)
WIRE = 1514 / 1448  # Ethernet+IP+TCP(timestamps) bytes per full segment at MTU 1500


def phases(path):
    """[(shaped, start, end)]: a phase starts `margin` s after its tc change finished (queued
    packets dropped by removing a qdisc are retransmitted meanwhile) and ends when the next
    change begins."""
    rows = [line.split() for line in open(path) if line.strip()]
    out = []
    for k, (state, _, done) in enumerate(rows):
        end = float(rows[k + 1][1]) if k + 1 < len(rows) else float("inf")
        out.append((state == "on", float(done) + margin, end))
    return out


def step_times(run, spans):
    """Per peer and condition: wall seconds per step over the intervals between consecutive
    step events (every 6th step on full MNIST) that lie wholly inside one phase."""
    events = [json.loads(x) for x in open(run / "events.jsonl")]
    per = {True: [], False: []}
    count = {True: 0, False: 0}
    for i in range(n):
        ev = sorted((e["step"], e["t"]) for e in events
                    if e.get("type") == "step" and e.get("node") == f"node-{i}")
        acc = {True: [0.0, 0], False: [0.0, 0]}
        for (s0, t0), (s1, t1) in zip(ev, ev[1:]):
            for shaped, a, b in spans:
                if a <= t0 and t1 <= b:
                    acc[shaped][0] += t1 - t0
                    acc[shaped][1] += s1 - s0
                    count[shaped] += 1
        for shaped, (secs, steps) in acc.items():
            per[shaped].append(1e3 * secs / steps if steps else float("nan"))
    return per, count


print(f"\n{n} peers, each in its own network namespace; tbf {rate} on every peer's upload and "
      f"download, toggled on/off within each run; ms per step from events.jsonl, mean over peers")
print(f"{'codec':22s} {'update B':>8s} {'sent B/st':>9s} {'compute':>8s} {'measured':>8s} "
      f"{'comm':>6s} {'predict':>8s} {'meas/pr':>7s} | {'star':>6s} {'m/star':>6s} | "
      f"{'pr+hdr':>6s} {'m/hdr':>6s} | {'intervals':>9s}")
rows = []
for codec in codecs:
    tag = re.sub("-+", "-", re.sub("[^a-z0-9]", "-", codec)).strip("-")
    run = out / f"netns-{tag}"
    per, count = step_times(run, phases(out / f"netns-{tag}.phases"))
    stats = []
    for i in range(n):
        st = [json.loads(p.read_text()) for p in (run / f"node-{i}").glob("stats-*.json")]
        stats.append(max(st, key=lambda s: s["time"]))
    sent = [(s["socket"]["bytes_socket_sent"] + s["socket"]["bytes_framing_sent"]) / s["step"]
            for s in stats]
    recv = [s["socket"]["bytes_socket_received"] / s["step"] for s in stats]
    update = (sum(s["counts"]["update_bytes"] for s in stats)
              / sum(s["counts"]["uploads"] for s in stats))
    ups, downs = [round(x) for x in sent], [round(x) for x in recv]
    duplex = 1e3 * link.exchange_time(ups, downs)
    star = 1e3 * link.step_time(ups, downs)
    sim = 1e3 * max(s["counts"]["comm_time_s_sim"] / s["step"] for s in stats)  # the peers' own
    compute, measured = sum(per[False]) / n, sum(per[True]) / n
    pred, pstar, phdr = compute + duplex, compute + star, compute + duplex * WIRE
    print(f"{codec:22s} {update:8.0f} {sum(sent) / n:9.0f} {compute:8.1f} {measured:8.1f} "
          f"{duplex:6.1f} {pred:8.1f} {measured / pred:7.3f} | {pstar:6.1f} "
          f"{measured / pstar:6.3f} | {phdr:6.1f} {measured / phdr:6.3f} | "
          f"{count[True]:4d}/{count[False]:<4d}")
    rows.append(dict(codec=codec, update_bytes=update, sent_bytes_per_step=sum(sent) / n,
                     received_bytes_per_step=sum(recv) / n, compute_ms=compute,
                     measured_ms=measured, comm_pred_ms=duplex, predicted_ms=pred,
                     ratio=measured / pred, star_comm_ms=star, sim_comm_ms=sim,
                     ratio_star=measured / pstar, predicted_hdr_ms=phdr,
                     ratio_hdr=measured / phdr, compute_ms_per_peer=per[False],
                     measured_ms_per_peer=per[True], intervals_shaped=count[True],
                     intervals_free=count[False], steps=[s["step"] for s in stats]))
print("compute: unshaped phases; measured: shaped phases; comm = max over peers of "
      "max(8*sent, 8*received)/rate (duplex); predict = compute + comm; star = compute + the "
      "simulator's slowest upload + slowest download; pr+hdr = predict with TCP/IP/Ethernet "
      "headers (x1514/1448); intervals = shaped/unshaped step-event intervals timed")
ok = all(abs(r["ratio"] - 1) <= 0.15 for r in rows)
each = ", ".join(f"{r['codec']} {100 * (r['ratio'] - 1):+.1f}%" for r in rows)
print(f"target |measured/predicted - 1| <= 15%: {'met' if ok else 'MISSED'} ({each})")
(out / "netns_swarm.json").write_text(json.dumps(rows, indent=1))
PYEOF
