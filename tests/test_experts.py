"""Federated experts: a real coordinator on 127.0.0.1 (subprocess), real worker processes
(python, sql, docs, and a second python worker), a tiny Qwen2 with a locally trained
tokenizer (no downloads), slices of ../shared/data/instruct.

The module shares one training run: the tests after `test_workers_build_experts_and_gateway`
read what it trained, and the last ones (rejections, kill -9) use their own specialty."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from thinwire.codecs import decode, make_codec
from thinwire.errors import DataError, run_main
from thinwire.tasks.lm import merge as merging
from thinwire.tasks.lm.pretrained import load_base, unique_state
from thinwire.tasks.lm.qwen import make_tiny_base
from thinwire.tasks.lm.sft import encode_rows, heldout_loss, read_rows
from thinwire.tasks.lm.tuning import QWEN2_ATTENTION, QWEN2_MLP, FFALora
from thinwire.tasks.lm.weights import load_weights, model_from_weights
from thinwire.wire import Update, parse_update, serialize_update

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "instruct"
if not DATA.is_dir():
    DATA = Path("/work/shared/data/instruct")
SRC = str(Path(__file__).resolve().parents[1] / "src")
TOKEN = "experts-token"
TARGETS = ",".join(QWEN2_ATTENTION + QWEN2_MLP)
CODEC = "int8"
WORKERS = {  # id: (specialty, file)
    "py-1": ("python_expert", "python_a"), "py-2": ("python_expert", "python_b"),
    "sql-1": ("sql_expert", "sql"), "docs-1": ("docs_expert", "docs")}

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="instruct data not found")


def slices() -> tuple[dict[str, list], dict[str, list]]:
    """Training rows per file and held-out rows per specialty (MBPP's test ids for python,
    Spider dev for sql, the end of the file for docs)."""
    python = read_rows(DATA / "python.jsonl")
    sql = read_rows(DATA / "sql.jsonl")
    docs = read_rows(DATA / "docs.jsonl")
    train = {"python_a": python[510:550], "python_b": python[550:590], "sql": sql[:40],
             "docs": docs[:40]}
    dev = [r for r in sql if r.get("split") == "dev"]
    held = {"python_expert": python[10:30], "sql_expert": dev[:20], "docs_expert": docs[-20:]}
    return train, held


class Coordinator:
    """The coordinator subprocess and an HTTP client that speaks to it."""

    def __init__(self, root: Path, base: Path, port: int) -> None:
        self.root, self.base, self.port = root, base, port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "PYTHONPATH": SRC, "THINWIRE_TOKEN": TOKEN}
        self.start()

    def start(self) -> None:
        cmd = [sys.executable, "-m", "thinwire.cli", "coordinator", "--experts", "--port",
               str(self.port), "--state-dir", str(self.root / "state"), "--base-model",
               str(self.base), "--codec", CODEC, "--lora-targets", TARGETS,
               "--round-timeout", "8"]
        self.log = open(self.root / "coordinator.log", "a")
        self.proc = subprocess.Popen(cmd, env=self.env, stderr=self.log)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            assert self.proc.poll() is None, (self.root / "coordinator.log").read_text()
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError("coordinator did not start")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def call(self, method: str, path: str, token: str = TOKEN, **kw) -> httpx.Response:
        return httpx.request(method, self.url + path, timeout=60,
                             headers={"Authorization": f"Bearer {token}"}, **kw)

    def get(self, path: str, **kw):
        r = self.call("GET", path, **kw)
        assert r.status_code == 200, r.text
        return r.json()

    def worker(self, wid: str, specialty: str, dataset: Path) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "thinwire.cli", "worker", "--coordinator-url", self.url,
               "--worker-id", wid, "--specialty", specialty, "--dataset", str(dataset),
               "--base-model", str(self.base), "--duration", "12", "--sync-interval", "2",
               "--lr", "1e-2", "--max-length", "160", "--token", TOKEN, "--retry-for", "30"]
        log = open(self.root / f"{wid}.log", "w")
        return subprocess.Popen(cmd, env=self.env, stderr=log)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    train, held = slices()
    for name, rows in train.items():
        with open(root / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    texts = [f"{r['prompt']}\n{r['reference_code']}" for rows in train.values() for r in rows]
    base = make_tiny_base(root / "base", texts, vocab_size=512)
    from thinwire.service.quick_test import free_port

    co = Coordinator(root, base, free_port())
    yield {"root": root, "base": base, "co": co, "held": held, "train": train}
    co.stop()


# ---- units --------------------------------------------------------------------------------
def test_bad_rows_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "reference_code": "b"}\n\n{"prompt": "c"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:3: field 'reference_code' is missing"):
        read_rows(path)
    path.write_text('{"prompt": "a", "reference_code": "b"}\nnot json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not a JSON object"):
        read_rows(path)
    path.write_text('{"prompt": "", "reference_code": "b"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'prompt' is not a non-empty"):
        read_rows(path)


def test_ties_and_linear_merge():
    a = {"w": torch.tensor([1.0, -2.0, 3.0, 0.5])}
    b = {"w": torch.tensor([1.0, 2.0, -1.0, 0.5])}
    lin = merging.merge("linear", [a, b], [0.5, 0.5])
    assert torch.equal(lin["w"], torch.tensor([1.0, 0.0, 1.0, 0.5]))
    one = merging.merge("ties", [a], [1.0], density=1.0)
    assert torch.allclose(one["w"], a["w"])
    ties = merging.merge("ties", [a, b], [1.0, 1.0], density=1.0)
    # a sign is elected per coordinate (a tie elects none) and only agreeing values averaged
    assert torch.equal(ties["w"], torch.tensor([1.0, 0.0, 3.0, 0.5]))
    assert torch.equal(merging.trim(a["w"], 0.5), torch.tensor([0.0, -2.0, 3.0, 0.0]))
    assert merging.merge_weights("samples", {"x": 30, "y": 10}) == {"x": 0.75, "y": 0.25}
    assert merging.merge_weights("x=2", {"x": 1, "y": 1}) == {"x": 2.0, "y": 0.0}


def test_ffa_lora_aggregate_is_the_mean_of_dense_updates(world):
    """Two workers' adapters trained from the same expert: the expert the coordinator keeps
    after their round has exactly the mean dense ΔW (peft's own merge gives each ΔW)."""
    import argparse
    import copy

    from thinwire.experts.config import load_config
    from thinwire.experts.core import ExpertsCoordinator
    from thinwire.experts.link import LocalLink
    from thinwire.experts.trainer import Slice
    from thinwire.experts.worker import build_worker
    from thinwire.tasks.lm.embed import centroid

    cfg = load_config(None, {"base_model": str(world["base"]), "codec": "none",
                             "weight": "uniform", "lora_targets": ["q_proj", "v_proj"]})
    co = ExpertsCoordinator(cfg, load_base(world["base"]), world["root"] / "unit-state")
    rows, workers, dense = world["train"]["python_a"], [], []
    for i in range(2):  # both register first: the round waits for both
        base = load_base(world["base"])
        link = LocalLink(co, f"u{i}")
        prompts = [r["prompt"] for r in rows]
        conf = link.register({"worker_id": f"u{i}", "session": "s", "specialty": "py",
                              "base": base.fingerprint, "count": len(prompts),
                              "centroid": centroid(base.model, base.tokenizer, prompts).tolist()
                              })["config"]
        args = argparse.Namespace(max_length=128, lr=1e-2, batch_size=4, seed=i,
                                  speed_factor=1.0, worker_id=f"u{i}", out=None,
                                  specialty="py")
        workers.append(build_worker(link, conf, base, rows[i * 20:(i + 1) * 20], args, None))
    for w in workers:
        w.load()
        for _ in range(3):
            w.trainer.train_for(0.0)
        merged = copy.deepcopy(w.trainer.model).merge_and_unload()  # peft's B·A, not ours
        dense.append({n: p.detach() - co.base_state[n]
                      for n, p in unique_state(merged).items()})
        assert w.upload(Slice(steps=3, samples=12, loss=1.0))
    expert = co.experts["py"]
    assert expert.version == 1 and len(expert.history[-1]["contributors"]) == 2
    ours = co.gateway.expert_delta(expert)
    mean = {n: (dense[0][n] + dense[1][n]) / 2 for n in dense[0]}
    assert set(ours) == {n for n in mean if mean[n].abs().max() > 0}
    for name, value in ours.items():
        assert torch.allclose(value, mean[name], atol=1e-6), name
    co.close()
