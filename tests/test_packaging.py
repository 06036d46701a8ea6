"""Packaging: a light core with extras (pyproject.toml), one clear line when an extra is
missing, the simulator on a core-only install, and TensorBoard scalars (`--tensorboard`).

The core-only checks run thinwire in a subprocess in which every optional package is
blocked (`sys.modules[name] = None`: importing it raises ImportError), as on a machine where
only `pip install thinwire` ran."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import thinwire
from thinwire.cli import EXTRAS
from thinwire.errors import (OPTIONAL, MissingExtra, ThinwireError, have, missing_extra, needs,
                             require)
from thinwire.obs.events import EventLog, to_tensorboard

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SRC = Path(thinwire.__file__).resolve().parents[1]
# every optional module thinwire imports, and what they would bring along
BLOCKED = sorted(set(OPTIONAL) | {"anyio", "httpcore", "sklearn", "scipy", "pandas", "grpc"})
RUN = """import sys
for name in {blocked!r}:
    sys.modules[name] = None  # import raises ImportError, as when it is not installed
from thinwire.cli import main
sys.exit(main(sys.argv[1:]))
"""


def thinwire_cli(args: list[str], blocked: list[str], cwd: Path,
                 timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-c", RUN.format(blocked=blocked), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def extra_requirements(extra: str, seen: frozenset[str] = frozenset()) -> set[str]:
    """The distribution names an extra installs, through `thinwire[...]` references."""
    names: set[str] = set()
    for req in PYPROJECT["project"]["optional-dependencies"][extra]:
        name = re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower().replace("_", "-")
        if name == "thinwire":
            for inner in re.search(r"\[(.*)\]", req).group(1).split(","):
                if inner not in seen:
                    names |= extra_requirements(inner.strip(), seen | {extra})
        else:
            names.add(name)
    return names


# ---- pyproject ---------------------------------------------------------------------------

def test_core_dependencies_are_light():
    core = {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower()
            for r in PYPROJECT["project"]["dependencies"]}
    assert core == {"torch", "numpy", "protobuf", "pydantic", "pyyaml", "tqdm"}
    assert "protobuf>=5.28,<7" in PYPROJECT["project"]["dependencies"]


def test_every_extra_named_in_a_message_exists_and_installs_the_module():
    extras = PYPROJECT["project"]["optional-dependencies"]
    for module, (pip_name, *named) in OPTIONAL.items():
        for extra in named:
            assert extra in extras, f"{module}: extra [{extra}] missing from pyproject"
            assert pip_name.lower().replace("_", "-") in extra_requirements(extra), \
                f"[{extra}] does not install {pip_name} ({module})"
    for extra in EXTRAS.values():  # the CLI's runtime -> extra table
        assert extra in extras
    # every `thinwire[X]` written in the source, the README and the Makefile
    texts = [p.read_text() for p in (SRC / "thinwire").rglob("*.py")]
    texts += [(ROOT / name).read_text() for name in ("README.md", "Makefile")]
    named = {x.strip() for t in texts for group in re.findall(r"thinwire\[([a-z,]+)\]", t)
             for x in group.split(",")}
    assert named and named <= set(extras), sorted(named - set(extras))
    everything = set().union(*(extra_requirements(e) for e in extras if e not in ("all", "dev")))
    assert extra_requirements("all") == everything  # all: every extra but dev
    assert '-e ".[all,dev]"' in (ROOT / "Makefile").read_text()


# what the core dependencies provide (protobuf is `google`), and the dev-only proto tool
CORE_MODULES = {"torch", "numpy", "google", "pydantic", "pydantic_core", "yaml", "tqdm"}
DEV_MODULES = {"grpc_tools"}  # wire/regen.py, run by hand inside the protoc venv


def test_every_third_party_import_is_core_or_optional():
    """A new dependency is declared: core, or in errors.OPTIONAL (and so in an extra)."""
    found: dict[str, str] = {}
    for path in (SRC / "thinwire").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and not node.level
                     and node.module else [])
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(SRC)))
    third = {m: p for m, p in found.items()
             if m not in sys.stdlib_module_names and m != "thinwire" and m != "__future__"}
    unknown = {m: p for m, p in third.items() if m not in CORE_MODULES | DEV_MODULES
               and m not in OPTIONAL}
    assert not unknown, f"declare these in pyproject and errors.OPTIONAL: {unknown}"


def test_embedded_digits_are_package_data():
    data = PYPROJECT["tool"]["setuptools"]["package-data"]["thinwire"]
    assert "tasks/digits/*" in data


# ---- the one-line message ------------------------------------------------------------------

def test_require_and_needs_name_the_command_and_the_extra():
    assert str(missing_extra("zmq", "swarm", "thinwire swarm")) == \
        'thinwire swarm needs pyzmq: pip install "thinwire[swarm]"'
    require("json", "swarm", "x")  # present: nothing
    assert isinstance(missing_extra("zmq"), ThinwireError)
    # a module of another extra than the command's: its own extra
    assert '"thinwire[lm]"' in str(missing_extra("transformers", "service", "thinwire x"))
    # the command's extra when it installs the module
    assert '"thinwire[swarm]"' in str(missing_extra("safetensors", "swarm", "thinwire swarm"))
    with pytest.raises(MissingExtra, match=r'thinwire quick-test needs httpx: pip install '
                                           r'"thinwire\[service\]"'):
        with needs("service", "thinwire quick-test"):
            raise ModuleNotFoundError("No module named 'httpx'", name="httpx")
    with pytest.raises(ModuleNotFoundError):  # not an optional package: a real bug, raised
        with needs("service", "thinwire quick-test"):
            raise ModuleNotFoundError("No module named 'nonsense'", name="nonsense")


def test_require_sees_a_blocked_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "zmq", None)
    with pytest.raises(MissingExtra, match=r'thinwire swarm needs pyzmq: pip install '
                                           r'"thinwire\[swarm\]"'):
        require("zmq", "swarm", "thinwire swarm")


@pytest.mark.parametrize("args, blocked, line", [
    (["swarm", "--nodes", "2", "--epochs", "1"], ["zmq"],
     'thinwire swarm needs pyzmq: pip install "thinwire[swarm]"'),
    (["quick-test"], ["httpx", "fastapi"],
     'thinwire quick-test needs httpx: pip install "thinwire[service]"'),
    (["run", "--task", "synthetic", "--dashboard", "0"], ["fastapi"],
     'the dashboard needs fastapi: pip install "thinwire[dashboard]"'),
    (["run", "--task", "synthetic", "--tensorboard", "tb"], ["tensorboard"],
     '--tensorboard needs tensorboard: pip install "thinwire[tensorboard]"'),
])
def test_a_missing_extra_is_one_line_and_exit_2(tmp_path, args, blocked, line):
    proc = thinwire_cli([*args, "--out", str(tmp_path / "runs")] if args[0] == "run" else args,
                        blocked, tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"thinwire: error: {line}"], proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing started


# ---- core only ---------------------------------------------------------------------------

def test_core_only_runs_the_simulator_on_the_embedded_digits(tmp_path):
    """`pip install thinwire` alone: help, run and compare on the shipped 5k digits (one
    process, so torch and the digits load once); plots are skipped with one note."""
    out = tmp_path / "runs"
    common = ["--nodes", "2", "--epochs", "1", "--max-steps", "3", "--checkpoint-every", "0",
              "--no-progress", "--out", str(out)]
    commands = [["--help"], ["run", *common, "--json"], ["compare", "--codecs", "int8", *common]]
    script = RUN.format(blocked=BLOCKED).replace("sys.exit(main(sys.argv[1:]))", f"""
for argv in {commands!r}:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    print("@@", argv[0], code, flush=True)
    sys.stderr.flush()
""")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts = re.split(r"^@@ .*$", proc.stdout, flags=re.M)
    codes = re.findall(r"^@@ (\S+) (\S+)$", proc.stdout, flags=re.M)
    assert codes == [("--help", "0"), ("run", "0"), ("compare", "0")], proc.stderr[-3000:]
    assert "quick-test" in parts[0]
    row = json.loads(parts[1].strip().splitlines()[-1])
    assert row["task"] == "mnist" and row["steps"] == 3 and 0 <= row["test_accuracy"] <= 1
    events = (out / row["run_name"] / "events.jsonl").read_text()
    assert '"type": "resources"' in events and '"cpu_percent"' in events  # monitor w/o psutil
    assert 'plots: skipped (no matplotlib: pip install "thinwire[plots]")' in parts[2]
    assert not (out / "accuracy.png").exists()


# ---- TensorBoard -------------------------------------------------------------------------

def scalars_of(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


tensorboard_only = pytest.mark.skipif(not have("tensorboard"), reason="no tensorboard")


@tensorboard_only
def test_sim_writes_tensorboard_scalars(tmp_path):
    from thinwire.sim.config import validate
    from thinwire.sim.experiment import run_experiment

    cfg = validate({"task": "synthetic", "task_args": {"n_samples": 200, "num_classes": 4,
                                                       "dim": 8},
                    "nodes": 2, "epochs": 2, "batch_size": 16, "checkpoint_every": 0,
                    "codec": "topk(ratio=0.25)", "policy": "every:2",
                    "out": tmp_path / "runs", "tensorboard": tmp_path / "tb"})
    row = run_experiment(cfg, progress=False, log=None)
    got = scalars_of(tmp_path / "tb" / cfg.name())
    for tag in ("step/train_loss", "step/bytes_up_wire", "step/bytes_down_wire",
                "step/uploads", "step/skipped", "epoch/test_accuracy", "epoch/test_loss"):
        assert tag in got, sorted(got)
    accuracy = got["epoch/test_accuracy"]
    assert len(accuracy) == 2
    assert accuracy[-1][1] == pytest.approx(row["test_accuracy"])
    assert accuracy[-1][0] == row["steps"]  # x: the step the epoch ended on
    assert got["step/skipped"][-1][1] > 0  # every:2 skips half the uploads


@tensorboard_only
def test_coordinator_streams_rounds_to_tensorboard(tmp_path):
    """`thinwire coordinator --tensorboard DIR`: each evaluated round is in TensorBoard as
    it closes (read back while the coordinator still runs: flushed every round)."""
    pytest.importorskip("fastapi")
    from thinwire.codecs import decode, make_codec
    from thinwire.service.config import load_config
    from thinwire.service.core import Coordinator
    from thinwire.service.observe import start_events, stop_events
    from thinwire.tasks import load_task
    from thinwire.wire import Update, serialize_update
    from thinwire.wire.model import parse_model_message

    cfg = load_config(None, {"task": "synthetic", "task_args": {"n_samples": 200, "dim": 4},
                             "total_workers": 1, "max_rounds": 2})
    co = Coordinator(cfg, tmp_path / "state", task=load_task("synthetic", n_samples=200, dim=4))
    monitor = start_events(co, every=0, tensorboard=tmp_path / "tb")
    co.register("a", "s")
    none = make_codec("none")
    for r in range(2):
        body, _ = co.pull("a")
        tensors = [none.encode(0.01 * torch.ones_like(decode(t)), None, t.name)
                   for t in parse_model_message(body)[1].tensors if not t.role]
        co.push(serialize_update(Update(node_id="a", round=r, seq=r + 1, kind="delta",
                                        num_samples=10, base_version=r, tensors=tensors)))
        assert co.run_evaluations() == 1
    got = scalars_of(tmp_path / "tb" / cfg.name())
    for tag in ("round/test_accuracy", "round/test_loss", "round/bytes_up_wire", "round/bytes_down_wire", "round/uploads",
                "round/skipped"):
        assert [x for x, _ in got[tag]] == [1, 2], (tag, sorted(got))  # rounds count from 1
    assert got["round/uploads"][-1][1] == 2 and got["round/bytes_up_wire"][-1][1] > 0
    stop_events(co, monitor)
    co.close()


@tensorboard_only
def test_to_tensorboard_converts_a_finished_run(tmp_path):
    log = EventLog(tmp_path, "r1")
    log.step(1, train_loss=2.0, bytes_up_wire=10, uploads=1, skipped=0, ok=True)
    log.emit("epoch", epoch=1, step=1, test_accuracy=0.7)
    log.emit("resources", cpu_percent=50.0, step=1)  # samples are not scalars
    log.close()
    assert to_tensorboard(tmp_path, tmp_path / "tb") == 5
    got = scalars_of(tmp_path / "tb" / "r1")
    assert set(got) == {"step/train_loss", "step/bytes_up_wire", "step/uploads",
                        "step/skipped", "epoch/test_accuracy"}
