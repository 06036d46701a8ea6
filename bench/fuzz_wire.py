"""Long fuzz run of the parse layer: parse_update + decode on mutated and random bytes.

    python bench/fuzz_wire.py [--cases 20000] [--seed 0] [--seconds 0] [--json]

Seeds are valid Updates over every codec example in tests/codec_cases.py plus extra index
codings (thinwire.wire.fuzz). Each case must end in success, WireError or CodecError;
anything else is counted as a crash and its first traceback printed. Reports outcome counts,
the slowest case, and RSS after a warm-up of 200 cases (lazy imports and first-use caches do
not count): the growth of the current RSS (a leak would show here) and of the peak (the most
one case held at once). Exits 1 if any case crashed.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import psutil  # noqa: E402
from codec_cases import EXAMPLES  # noqa: E402
from thinwire.wire.fuzz import EXTRA_SPECS, mutate, parse_and_decode, seed_updates  # noqa: E402

WARMUP = 200


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def one_case(seeds: list[bytes], rng: random.Random) -> tuple[str, bytes]:
    """Mutated seed 9 times in 10, fresh random bytes otherwise."""
    if rng.random() < 0.1:
        data = rng.randbytes(rng.randrange(3000))
    else:
        data = mutate(rng.choice(seeds), rng, seeds)
    return parse_and_decode(data), data


def run(cases: int, seed: int, seconds: float) -> dict:
    seeds = seed_updates(list(EXAMPLES.values()) + list(EXTRA_SPECS))
    rng, counts, crashes = random.Random(seed), Counter(), Counter()
    slowest, start, rss_start = 0.0, time.perf_counter(), (0.0, 0.0)
    done = 0
    for done in range(1, cases + 1):
        if done == WARMUP:
            rss_start = (rss_mb(), peak_rss_mb())
        t0 = time.perf_counter()
        try:
            outcome, _ = one_case(seeds, rng)
        except Exception as exc:  # noqa: BLE001 - the point: anything else is a finding
            outcome = "crash"
            key = f"{type(exc).__name__}: {str(exc)[:160]}"
            if not crashes[key]:
                traceback.print_exc()
            crashes[key] += 1
        counts[outcome] += 1
        slowest = max(slowest, time.perf_counter() - t0) if done > WARMUP else slowest
        if seconds and time.perf_counter() - start > seconds:
            break
    return {"cases": done, "outcomes": dict(counts), "crashes": dict(crashes),
            "max_case_s": round(slowest, 4), "wall_s": round(time.perf_counter() - start, 1),
            "rss_mb": round(rss_mb(), 1), "peak_rss_mb": round(peak_rss_mb(), 1),
            "rss_growth_mb": round(rss_mb() - rss_start[0], 1),
            "peak_rss_growth_mb": round(peak_rss_mb() - rss_start[1], 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=0, help="stop early after this long")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    report = run(args.cases, args.seed, args.seconds)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>28}: {value}")
    return 1 if report["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
