"""The shared config base: aliases, one-line errors, generated flags, precedence, user code."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from thinwire.cli import build_parser
from thinwire.config import config_flags
from thinwire.errors import ConfigError
from thinwire.service.config import load_config
from thinwire.service.quick_test import build_parser as quick_test_parser
from thinwire.service.worker import build_parser as worker_parser
from thinwire.sim.config import RunConfig, build_config, validate

ROOT = Path(__file__).parents[1]
SRC = ROOT / "src"
# Every flag `thinwire run` had when its table was written by hand.
OLD_RUN_FLAGS = [
    "-c", "--config", "--set", "--json", "--no-progress", "--task", "--data-dir", "--download",
    "--model", "--nodes", "--split", "--mode", "--local-steps", "--error-feedback",
    "--down-codec", "--policy", "--skipped", "--weight", "--epochs", "--batch-size", "--lr",
    "--momentum", "--seed", "--lr-schedule", "--lr-warmup", "--pack", "--threads",
    "--bandwidth", "--downlink", "--latency-ms", "--topology", "--out", "--checkpoint-every",
    "--resume", "--max-steps", "--run-name", "--codec", "--centralized"]


def subparser(name):
    return build_parser()._subparsers._group_actions[0].choices[name]


def parse_run(*argv):
    args = build_parser().parse_args(["run", *argv])
    return build_config(args.config, config_flags(args), args.set)


def test_service_aliases_are_one_key(tmp_path):
    old = load_config(None, {"mode": "bbit", "clock": 4})
    new = load_config(None, {"preset": "bbit", "t_bar": 4})
    assert old == new and (old.preset, old.mode, old.t_bar, old.clock) == ("bbit", "bbit", 4, 4)
    path = tmp_path / "flq.json"
    path.write_text(json.dumps({"mode": "bin", "clock": 9}))
    later = load_config(path, {"preset": "laq8"}, ["t_bar=5"])  # later layer wins either way
    assert (later.preset, later.t_bar) == ("laq8", 5)
    assert load_config(None, None, ["mode=bin", "clock=2"]).model_dump()["preset"] == "bin"
    view = new.worker_view()
    assert (view["preset"], view["mode"], view["t_bar"], view["clock"]) == ("bbit", "bbit", 4, 4)


def test_design_presets_load_unchanged():
    for path in sorted((ROOT / "examples/flq").glob("*.json")):
        raw = json.loads(path.read_text())
        cfg = load_config(path)
        assert (cfg.preset, cfg.t_bar) == (raw["mode"], raw["clock"])
        assert cfg.error_feedback is True  # the service's default too


def test_simulator_laq_clock_alias_and_set():
    cfg = build_config(None, {"laq": {"clock": 7}}, ["communication.sync_interval=3"])
    assert cfg.laq.t_bar == 7 and cfg.communication.sync_interval == 3
    assert build_config(None, None, ["laq.clock=11"]).laq.t_bar == 11
    assert RunConfig().error_feedback is False  # the simulator keeps its own default


def test_service_flags_have_distinct_names():
    assert quick_test_parser().parse_args(["--mode", "bin"]).preset == "bin"
    assert quick_test_parser().parse_args(["--preset", "bbit"]).preset == "bbit"
    assert worker_parser().parse_args(["--sync-interval", "0.5"]).sync_seconds == 0.5
    assert worker_parser().parse_args(["--sync-seconds", "3"]).sync_seconds == 3.0


@pytest.mark.parametrize("load, data, fragment", [
    (validate, {"nodez": 3}, "unknown key 'nodez'"),
    (validate, {"laq": {"t_barr": 3}}, "unknown key 'laq.t_barr'"),
    (validate, {"epochs": "many"}, "epochs='many'"),
    (validate, {"mode": "async"}, "mode='async'"),
    (validate, {"split": "dirichlet:-1"}, "bad split spec"),
    (validate, {"laq": {"clock": 0}}, "laq.t_bar (old name clock)=0"),
    (lambda d: load_config(None, d), {"mode": "zip"}, "preset (old name mode)='zip'"),
    (lambda d: load_config(None, d), {"mode": "bin", "preset": "bbit"}, "one key"),
    (lambda d: load_config(None, d), {"rounds": 3}, "unknown key 'rounds'"),
])
def test_bad_config_is_one_clear_line(load, data, fragment):
    with pytest.raises(ConfigError) as err:
        load(data)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_generated_flags_cover_every_key_with_help():
    run = subparser("run")
    options = {o: a for a in run._actions for o in a.option_strings}
    assert not set(OLD_RUN_FLAGS) - set(options)
    for name, info in RunConfig.model_fields.items():
        if name in ("communication", "laq"):
            sub = info.annotation.model_fields
            flags = [f"--{name}.{k.replace('_', '-')}" for k in sub]
        else:
            flags = [f"--{name.replace('_', '-')}"]
        for flag in flags:
            assert flag in options and options[flag].help, flag
    assert "--clock" not in options and "--laq.clock" in options  # an old spelling, nested
    compare = {o for a in subparser("compare")._actions for o in a.option_strings}
    assert "--codec" not in compare and {"--codecs", "--seeds", "--policy"} <= compare


def test_flags_reach_the_config_typed_and_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 5\ncommunication: {grad_norm_threshold: 0.3, sync_interval: 7}\n")
    cfg = parse_run("-c", str(path), "--epochs", "2", "--mode", "fedavg", "--pack",
                    "--lr-milestones", "1,2", "--task-args", "{n_samples: 100}",
                    "--communication.sync-interval", "4", "--laq.clock", "6",
                    "--set", "communication.sync_interval=3")
    assert (cfg.epochs, cfg.mode, cfg.pack, cfg.lr_milestones) == (2, "fedavg", True, [1, 2])
    assert cfg.task_args == {"n_samples": 100} and cfg.laq.t_bar == 6
    assert (cfg.communication.grad_norm_threshold, cfg.communication.sync_interval) == (0.3, 3)
    assert parse_run().epochs == RunConfig().epochs  # no flag given: no override
    with pytest.raises(ConfigError, match="epochs"):
        parse_run("--epochs", "0")


def test_examples_comm_yaml_runs(tmp_path):
    from thinwire.sim.experiment import run_experiment

    cfg = build_config(ROOT / "examples/comm.yaml",
                       {"task": "synthetic", "nodes": 2, "epochs": 1, "out": tmp_path,
                        "task_args": {"n_samples": 160}, "checkpoint_every": 0},
                       ["communication.sync_interval=3"])
    assert (cfg.policy, cfg.communication.sync_interval) == ("trigger", 3)
    row = run_experiment(cfg, progress=False, log=None)
    assert row["policy"] == "trigger" and row["uploads"] > 0


USER_MODULE = '''
import torch
from torch import nn


def tiny():
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 4))


def blobs(n_samples=200):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n_samples) % 4
    x = torch.randn(n_samples, 8, generator=g) + 6 * torch.eye(4, 8)[y]
    return (x[40:], y[40:]), (x[:40], y[:40])
'''


def cli(*args, cwd, pythonpath):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(pythonpath)])}
    return subprocess.run([sys.executable, "-m", "thinwire.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def test_cli_user_model_and_task_by_dotted_path(tmp_path):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(USER_MODULE)
    res = cli("run", "--task", "mypkg.mod:blobs", "--task-args", "{n_samples: 240}",
              "--model", "mypkg.mod:tiny", "--nodes", "2", "--epochs", "2", "--batch-size", "16",
              "--checkpoint-every", "0", "--json", "--no-progress", "--out", str(tmp_path / "o"),
              cwd=tmp_path, pythonpath=tmp_path)
    assert res.returncode == 0, res.stderr
    row = json.loads(res.stdout.strip().splitlines()[-1])
    assert row["model"] == "mypkg.mod:tiny" and row["task"] == "mypkg.mod:blobs"
    assert row["test_accuracy"] > 0.5  # chance is 0.25
    for flag, value, fragment in [("--model", "nopkg.mod:tiny", "cannot import nopkg"),
                                  ("--model", "mypkg.mod:huge", "has no attribute 'huge'"),
                                  ("--task", "mypkg.mod", "or pkg.module:factory")]:
        args = ["--task", "mypkg.mod:blobs", flag, value] if flag == "--model" else [flag, value]
        res = cli("run", *args, "--out", str(tmp_path / "o"), cwd=tmp_path, pythonpath=tmp_path)
        assert res.returncode == 2 and fragment in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
