"""`thinwire bench codecs`: throughput, compression and error of every codec on one tensor.

Each codec encodes and decodes the same seeded heavy-tailed gradient-like tensor (Gaussian
times uniform**4, so most entries are tiny and a few are large, like real gradients). Speeds
are MB of fp32 input per second, best of `--repeat` runs after a warm-up, next to the speed of
a plain `dst.copy_(x)` into a preallocated tensor: the memory-bandwidth ceiling that no codec
can beat, which makes the numbers comparable across machines (`%mc`: memcpy and the codec run
alternately, best of each). Progress goes to stderr; stdout gets the table, or exactly one JSON
object with `--json`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from ..codecs import codec_for_payload, fused, make_codec, names
from ..errors import ThinwireError

# One realistic spec per registered codec; a codec missing here is benchmarked by bare name.
DEFAULT_SPECS: dict[str, str] = {
    "none": "none",
    "fp16": "fp16",
    "bf16": "bf16",
    "int8": "int8",
    "qsgd": "qsgd(levels=16)",
    "nc": "nc",
    "terngrad": "terngrad",
    "signsgd": "signsgd(scale=mean)",
    "onebit": "onebit",
    "topk": "topk(ratio=0.01)",
    "randomk": "randomk(ratio=0.01)",
    "thresholdv": "thresholdv(v=0.01)",
    "dgc": "dgc(ratio=0.01)",
    "sketch": "sketch(ratio=0.01)",
    "powersgd": "powersgd(rank=4)",
    "laq": "laq(bits=4)",
    "bbit": "bbit(bits=4)",
    "bin": "bin",
}
# Throughput targets in % of memcpy (encode and decode): the dense casts must stay cheap.
TARGET_PCT: dict[str, float] = {"fp16": 25.0, "int8": 25.0, "signsgd": 25.0}
DEFAULT_TARGET_PCT = 5.0
SCALE = 1e-2  # typical gradient magnitude


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="thinwire bench codecs", description=__doc__.split("\n")[0])
    p.add_argument("--numel", type=int, default=10_000_000, help="tensor size (elements)")
    p.add_argument("--codecs", default="", help="comma-separated specs (default: every codec)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (best)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = p.parse_args(argv)
    if args.numel < 1 or args.repeat < 1:
        p.error("--numel and --repeat must be positive")
    return args


def split_specs(text: str) -> list[str]:
    """Split `a(x=1,y=2),b` on the commas outside parentheses."""
    specs, depth, cur = [], 0, []
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            specs.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    specs.append("".join(cur).strip())
    return [s for s in specs if s]


def default_specs() -> list[str]:
    """The table's spec per registered codec; the bare name if that spec no longer parses."""
    specs = []
    for name in names():
        spec = DEFAULT_SPECS.get(name, name)
        try:
            make_codec(spec)
        except ThinwireError as exc:
            print(f"default spec {spec!r} rejected ({exc}); using '{name}'", file=sys.stderr)
            spec = name
        specs.append(spec)
    return specs


def make_tensor(n: int, seed: int) -> torch.Tensor:
    """Seeded heavy-tailed gradient-like tensor, 2-D when it can be (powersgd wants a matrix)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen) * torch.rand(n, generator=gen) ** 4 * SCALE
    return x.view(n // 1000, 1000) if n % 1000 == 0 and n >= 2000 else x


def paired(base: Callable[[], Any], fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Best seconds of `base` and of `fn`, run alternately `repeat` times after a warm-up.

    Background load only ever adds time, so the best run is the steadiest estimate; taking
    both bests from the same interleaved window keeps their ratio fair on a shared machine.
    """
    base()
    fn()
    best_base = best_fn = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        base()
        t1 = time.perf_counter()
        fn()
        t2 = time.perf_counter()
        best_base, best_fn = min(best_base, t1 - t0), min(best_fn, t2 - t1)
    return max(best_base, 1e-9), max(best_fn, 1e-9)


def error_stats(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Relative L2 error and cosine similarity, in float64."""
    a, b = x.double().reshape(-1), y.double().reshape(-1)
    na, nb = float(a.norm()), float(b.norm())
    rel = float((a - b).norm()) / na if na > 0 else (0.0 if nb == 0 else math.inf)
    cos = float(a @ b) / (na * nb) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
    return rel, cos


def bench_codec(spec: str, x: torch.Tensor, memcpy: Callable[[], Any],
                repeat: int) -> dict[str, Any]:
    """Encode/decode speed (MB/s of fp32 input, and % of memcpy), ratio, error and cosine."""
    codec = make_codec(spec)
    mb = x.numel() * 4 / 1e6
    payload = codec.encode(x, {})  # fresh sender and receiver state for the error numbers
    receiver = codec_for_payload(payload)  # as a Decoder does: the codec the payload names
    y = receiver.decode(payload, {})
    rel, cos = error_stats(x, y)
    enc_slot: dict[str, Any] = {}
    mc_enc, enc_s = paired(memcpy, lambda: codec.encode(x, enc_slot), repeat)
    last = codec.encode(x, enc_slot)
    receiver = codec_for_payload(last)
    dec_slot: dict[str, Any] = {}
    mc_dec, dec_s = paired(memcpy, lambda: receiver.decode(last, dec_slot), repeat)
    return {"spec": codec.spec(), "encode_MBps": mb / enc_s, "decode_MBps": mb / dec_s,
            "ratio": x.numel() * 4 / payload.nbytes, "rel_error": rel, "cos": cos,
            "encode_pct_memcpy": 100 * mc_enc / enc_s, "decode_pct_memcpy": 100 * mc_dec / dec_s,
            "payload_bytes": payload.nbytes, "memcpy_s": min(mc_enc, mc_dec)}


def topk_vs_torch(spec: str, x: torch.Tensor, repeat: int) -> dict[str, Any]:
    """torch.topk(|x|, k) time over the topk codec's encode time (>1: the codec is faster)."""
    codec = make_codec(spec)
    flat = x.reshape(-1)
    k = max(1, int(round(getattr(codec.params, "ratio", 0.01) * flat.numel())))
    slot: dict[str, Any] = {}
    torch_s, codec_s = paired(lambda: torch.topk(flat.abs(), k), lambda: codec.encode(x, slot),
                              repeat)
    return {"spec": spec, "k": k, "torch_s": torch_s, "codec_s": codec_s,
            "speedup": torch_s / codec_s}


def target_of(spec: str) -> float:
    return TARGET_PCT.get(stage_name(spec), DEFAULT_TARGET_PCT)


def stage_name(spec: str) -> str:
    return spec.split("(")[0].split("+")[0].strip()


def run(args: argparse.Namespace) -> dict[str, Any]:
    specs = split_specs(args.codecs) if args.codecs else default_specs()
    load = _loadavg()
    x = make_tensor(args.numel, args.seed)
    dst = torch.empty_like(x)
    memcpy_s, _ = paired(lambda: dst.copy_(x), lambda: None, args.repeat)
    codecs: dict[str, Any] = {}
    topk = None
    for i, spec in enumerate(specs, 1):
        print(f"[{i}/{len(specs)}] {spec}", file=sys.stderr, flush=True)
        try:
            res = bench_codec(spec, x, lambda: dst.copy_(x), args.repeat)
            if topk is None and stage_name(spec) == "topk":
                topk = topk_vs_torch(spec, x, args.repeat)
        except Exception as exc:  # noqa: BLE001 - one broken codec must not hide the rest
            msg = str(exc) if isinstance(exc, ThinwireError) else f"{type(exc).__name__}: {exc}"
            codecs[spec] = {"error": msg}
            print(f"  failed: {msg}", file=sys.stderr)
            continue
        codecs[spec] = res
        memcpy_s = min(memcpy_s, res["memcpy_s"])
    mb = x.numel() * 4 / 1e6
    return {"numel": x.numel(), "memcpy_MBps": mb / memcpy_s, "codecs": codecs,
            "topk_vs_torch": topk["speedup"] if topk else None, "topk_detail": topk,
            "repeat": args.repeat, "threads": torch.get_num_threads(),
            "fused": fused.status()["mode"], "loadavg": [load, _loadavg()]}


def _loadavg() -> float | None:
    """1-minute load average (how busy a shared machine was), None where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def to_json(result: dict[str, Any]) -> str:
    keys = ("encode_MBps", "decode_MBps", "ratio", "rel_error", "cos", "encode_pct_memcpy",
            "decode_pct_memcpy")
    codecs = {spec: ({k: _finite(r[k]) for k in keys} if "error" not in r else r)
              for spec, r in result["codecs"].items()}
    out = {"numel": result["numel"], "memcpy_MBps": result["memcpy_MBps"], "codecs": codecs,
           "topk_vs_torch": result["topk_vs_torch"], "repeat": result["repeat"],
           "threads": result["threads"], "fused": result["fused"], "loadavg": result["loadavg"]}
    return json.dumps(out)


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def format_table(result: dict[str, Any]) -> str:
    mc = result["memcpy_MBps"]
    mb = result["numel"] * 4 / 1e6
    lines = [f"N = {result['numel']:,} fp32 ({mb:.1f} MB), {result['threads']} threads, best of "
             f"{result['repeat']}, fused kernels: {result['fused']}, load average "
             f"{result['loadavg'][0]} at start, {result['loadavg'][1]} at end",
             f"memcpy (dst.copy_(x)): {mc:,.0f} MB/s; %mc = best memcpy time / best codec time,"
             " the two run alternately", ""]
    head = (f"{'codec':<38} {'enc MB/s':>9} {'%mc':>6} {'dec MB/s':>9} {'%mc':>6} "
            f"{'ratio':>8} {'rel err':>9} {'cos':>7}  target")
    lines += [head, "-" * len(head)]
    for spec, r in result["codecs"].items():
        if "error" in r:
            lines.append(f"{spec:<38} ERROR {r['error']}")
            continue
        enc, dec = r["encode_pct_memcpy"], r["decode_pct_memcpy"]
        goal = target_of(spec)
        verdict = "ok" if min(enc, dec) >= goal else f"MISS (<{goal:.0f}%)"
        lines.append(f"{spec:<38} {r['encode_MBps']:>9,.0f} {enc:>5.1f}% {r['decode_MBps']:>9,.0f}"
                     f" {dec:>5.1f}% {r['ratio']:>8.1f} {r['rel_error']:>9.2e} {r['cos']:>7.4f}"
                     f"  {goal:.0f}% {verdict}")
    t = result["topk_detail"]
    if t:
        lines += ["", f"{t['spec']} encode vs torch.topk(x.abs(), k={t['k']:,}): "
                      f"{t['codec_s'] * 1e3:.1f} ms vs {t['torch_s'] * 1e3:.1f} ms "
                      f"(best of each): {t['speedup']:.2f}x"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except ThinwireError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(to_json(result) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
