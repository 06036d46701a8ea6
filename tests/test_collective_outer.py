"""Local steps + compressed pseudo-gradients (DiLoCo) on 2 gloo processes (issue 12).

The workers record final weights and byte counters; the tests compare them with per-step
DDP and with the payload size of one sync.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from test_collective import _init, _mlp, spawn
from thinwire.collective.outer import OuterSync, buckets_of, split_views
from thinwire.collective.state import CommHookState

STEPS, LR = 6, 0.1


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(16, 40, generator=g), torch.randn(16, 6, generator=g)


def _loss(model, rank: int, step: int) -> torch.Tensor:
    x, y = _batch(rank, step)
    return (model(x) - y).pow(2).mean()


def _ddp_sgd() -> list[torch.Tensor]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(_mlp())
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for step in range(STEPS):
        _loss(model, dist.get_rank(), step).backward()
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in model.module.parameters()]


def _outer(spec: str, h: int, lr: float, momentum: float, inner: str, steps: int,
           error_feedback: bool = False) -> dict:
    model = _mlp()
    if dist.get_rank() == 1:  # a different start: the sync must begin from rank 0's weights
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
    state = CommHookState(spec, error_feedback=error_feedback, start_iter=0)
    sync = OuterSync(model, state, h, lr, momentum, bucket_cap_mb=0.004)
    opt = (torch.optim.SGD(model.parameters(), lr=LR) if inner == "sgd"
           else torch.optim.AdamW(model.parameters(), lr=1e-2))
    per_sync = []
    for step in range(steps):
        _loss(model, dist.get_rank(), step).backward()
        opt.step()
        opt.zero_grad()
        if sync.due(step, steps - 1):
            sync.sync()
            per_sync.append(state.stats.end_step()["bytes_compressed"])
    return {"params": [p.detach().clone() for p in model.parameters()], "per_sync": per_sync,
            "syncs": sync.syncs, "buckets": len(sync.buckets), "path": state.path}


def _worker(rank: int, init: str, out: str) -> None:
    _init(rank, init)
    result = {"ddp": _ddp_sgd(),
              "h1": _outer("none", 1, 1.0, 0.0, "sgd", STEPS),
              "none": _outer("none", 3, 0.7, 0.9, "adamw", 9),
              "int8": _outer("int8", 3, 0.7, 0.9, "adamw", 9),
              "topk": _outer("topk(ratio=0.1)+int8", 4, 0.7, 0.9, "adamw", 10, True),
              "powersgd": _outer("powersgd(rank=2)", 3, 0.7, 0.9, "adamw", 6, True)}
    torch.save(result, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("outer")
    spawn(_worker, str(out))
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def test_h1_sgd_outer_lr1_is_synchronous_sgd(runs):
    for r in runs:
        for a, b in zip(r["ddp"], r["h1"]["params"]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["none", "int8", "topk", "powersgd"])
def test_every_rank_ends_on_the_same_global_model(runs, case):
    for a, b in zip(runs[0][case]["params"], runs[1][case]["params"]):
        assert torch.equal(a, b)
        assert torch.isfinite(a).all()


def test_bytes_are_syncs_times_the_payload_of_one_sync(runs):
    n = sum(p.numel() for p in _mlp().parameters())
    for r in runs:
        none, int8 = r["none"], r["int8"]
        assert none["syncs"] == 3 and none["per_sync"] == [4 * n] * 3  # fp32, H = 3 of 9 steps
        assert int8["syncs"] == 3 and int8["path"] == "int8_shared"
        assert len(set(int8["per_sync"])) == 1  # every sync sends the same payload
        # one byte a value, plus each bucket's scale / header
        assert n <= int8["per_sync"][0] <= n + 64 * int8["buckets"]
        assert r["topk"]["syncs"] == 3  # 10 steps, H = 4: after 4, 8 and the last one
        assert 0 < max(r["topk"]["per_sync"]) < 4 * n / 4


def test_buckets_and_views_cover_every_parameter_once():
    params = [torch.zeros(3, 4), torch.zeros(10), torch.zeros(2, 2)]
    assert buckets_of(params, 50) == [[0], [1], [2]]
    assert buckets_of(params, 1000) == [[0, 1, 2]]
    flat = torch.arange(26.0)
    views = split_views(flat, params)
    assert [v.shape for v in views] == [p.shape for p in params]
    assert views[2].flatten().tolist() == [22.0, 23.0, 24.0, 25.0]


def test_train_lm_outer_row(tmp_path):
    """torchrun end to end: the row names the codec, keeps the outer settings in
    compress_config and compares bytes with what per-step DDP sends."""
    text = tmp_path / "t.txt"
    text.write_text("".join(f"line {i} of a small corpus about thin links.\n"
                            for i in range(400)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node=2", "-m", "thinwire.collective.train_lm", "--data", str(text),
           "--out", str(tmp_path / "out"), "--model", "tiny", "--vocab-size", "300",
           "--max-length", "32", "--batch-size", "4", "--max-steps", "6", "--warmup-steps",
           "1", "--outer-steps", "3", "--comm-compress", "int8", "--eval-every", "2",
           "--target-ppl", "1e9", "--no-save", "--run-name", "diloco"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((tmp_path / "out" / "results.jsonl").read_text().splitlines()[-1])
    assert row["compress_method"] == "int8" and row["outer_syncs"] == 2
    cfg = row["compress_config"]
    assert (cfg["outer_steps"], cfg["outer_lr"], cfg["outer_momentum"]) == (3, 0.7, 0.9)
    assert row["bytes_raw_total"] == 6 * 4 * row["model_params"]  # per-step fp32 DDP
    # H = 3 and int8: ~12x fewer bytes than per-step DDP, ~4x on each sync
    assert 11 < row["compression_ratio"] <= 12 and 3.8 < row["compression_ratio_sync"] <= 4
    assert math.isfinite(row["val_ppl"]) and row["time_to_target_ppl_s"] is not None
    assert "hint: 2 outer steps with outer momentum 0.9" in proc.stdout  # DiLoCo's defaults


def test_outer_flags_refuse_what_cannot_run(tmp_path):
    from thinwire.collective.options import parse_args
    from thinwire.errors import ConfigError

    text = tmp_path / "t.txt"
    text.write_text("a small corpus\n")
    for bad, says in ((["--outer-steps", "-1"], ">= 0"), (["--outer-steps", "5", "--fsdp"],
                                                          "drop --fsdp")):
        with pytest.raises(ConfigError, match=says):
            parse_args(["--data", str(text), *bad])
    with pytest.raises(ValueError, match=">= 1"):
        OuterSync(_mlp(), CommHookState("none"), 0)
