"""Defaults that work for sparsifiers (issue 13): chosen only for keys the user did not set,
printed in the run header; explicit flags win; momentum correction around error feedback."""

import pytest
import torch

from thinwire.cli import build_parser
from thinwire.codecs import ErrorFeedback, build, make_codec
from thinwire.config import config_flags
from thinwire.errors import ConfigError
from thinwire.sim.config import build_config, validate
from thinwire.sim.experiment import run_experiment

TOPK = "topk(ratio=0.01)+int8"
SYNTH = {"task": "synthetic", "task_args": {"n_samples": 200, "num_classes": 4, "dim": 8},
         "nodes": 2, "epochs": 1, "batch_size": 16, "checkpoint_every": 0}


def flags(*argv):
    args = build_parser().parse_args(["run", *argv])
    return build_config(args.config, config_flags(args), args.set)


def test_a_sparsifier_gets_the_defaults_and_the_literal_command_names_them():
    cfg = flags("--codec", TOPK, "--error-feedback")
    assert (cfg.pack, cfg.lr_warmup, cfg.lr_schedule, cfg.momentum_correction) == \
        (True, 100, "step", True)
    assert (cfg.down_codec, cfg.down_error_feedback) == (TOPK, True)
    assert cfg.momentum == 0.9  # kept: the nodes apply it, the aggregator runs plain SGD
    assert cfg.lr == 0.1
    assert set(cfg.auto) == {"pack", "lr", "lr_warmup", "lr_schedule", "momentum_correction",
                             "down_codec", "down_error_feedback"}
    assert cfg.model_fields_set == {"codec", "error_feedback"}  # auto values stay implicit
    assert "-pack-lrstep-mc-" in cfg.name()


def test_explicit_flags_win_including_false_and_none():
    cfg = flags("--codec", TOPK, "--error-feedback", "--no-pack", "--down-codec", "none",
                "--lr-warmup", "0", "--lr-schedule", "constant", "--no-momentum-correction",
                "--lr", "0.05")
    assert (cfg.pack, cfg.lr_warmup, cfg.lr_schedule, cfg.momentum_correction, cfg.lr) == \
        (False, 0, "constant", False, 0.05)
    assert (cfg.down_codec, cfg.down_error_feedback) == ("none", False)
    assert cfg.auto == {}
    mixed = flags("--codec", TOPK, "--error-feedback", "--set", "pack=false",
                  "--no-down-error-feedback")
    assert not mixed.pack and mixed.down_codec == TOPK and not mixed.down_error_feedback
    assert set(mixed.auto) == {"lr", "lr_warmup", "lr_schedule", "momentum_correction",
                               "down_codec"}


def test_no_defaults_for_dense_codecs_and_centralized_runs():
    for spec in ("none", "int8", "qsgd(levels=4)", "powersgd(rank=2)"):
        assert validate({"codec": spec, "error_feedback": True}).auto == {}
    assert validate({"codec": TOPK, "error_feedback": True, "centralized": True}).auto == {}


def test_each_sparsifier_gets_what_fits_it():
    dgc = validate({"codec": "dgc(ratio=0.02)+int8"})
    assert dgc.momentum == 0.0 and not dgc.momentum_correction  # dgc keeps its own momentum
    assert dgc.down_codec == "topk(ratio=0.02)+int8" and dgc.down_error_feedback
    rand = validate({"codec": "randomk(ratio=0.1)"})
    assert rand.pack and rand.down_codec == "none"  # error feedback diverges around n/k
    plain = validate({"codec": TOPK})  # no error feedback: nothing to correct
    assert not plain.momentum_correction
    fed = validate({"codec": TOPK, "error_feedback": True, "mode": "fedavg"})
    assert not fed.momentum_correction and fed.pack
    still = validate({"codec": TOPK, "error_feedback": True, "momentum": 0.0})
    assert not still.momentum_correction
    with pytest.raises(ConfigError, match="momentum_correction"):
        validate({"codec": TOPK, "momentum_correction": True})


def test_chosen_values_equal_the_same_values_given():
    """The literal command is the measured command with every default spelled out."""
    literal = validate({"codec": TOPK, "error_feedback": True})
    spelled = validate({"codec": TOPK, "error_feedback": True, "lr": 0.1, "pack": True,
                        "lr_warmup": 100, "lr_schedule": "step", "momentum_correction": True,
                        "down_codec": TOPK, "down_error_feedback": True})
    assert literal.model_dump() == spelled.model_dump() and literal.name() == spelled.name()


def test_explicit_keys_rebuild_with_per_codec_defaults():
    base = validate({"codec": "none", "lr_warmup": 7}).explicit({"codec"})
    assert base == {"lr_warmup": 7}
    again = validate({**base, "codec": TOPK, "error_feedback": True})
    assert again.lr_warmup == 7 and again.pack and "lr_warmup" not in again.auto


def test_the_run_header_prints_every_chosen_value_on_one_line(tmp_path):
    lines = []
    cfg = validate({**SYNTH, "out": tmp_path, "codec": "topk(ratio=0.25)+int8",
                    "error_feedback": True})
    row = run_experiment(cfg, progress=False, log=lines.append)
    header = [ln for ln in "\n".join(lines).splitlines() if ln.startswith("sparsifier")]
    # 100 steps, at most half the first epoch: 100 samples / (2 nodes x 16) = 4 steps
    assert cfg.lr_warmup == 2 and cfg.auto["lr_warmup"] == 2
    assert header == ["sparsifier defaults: pack, lr 0.1, lr warm-up 2, step decay in last "
                      "epoch, momentum correction on the nodes (aggregator momentum 0), "
                      "down-codec topk(ratio=0.25)+int8 with server error feedback (set them "
                      "to override)"]
    assert row["momentum_correction"] and row["pack"]
    assert row["auto_defaults"] == sorted(cfg.auto)
    assert row["compression_ratio_down"] > 1.5
    lines.clear()
    run_experiment(validate({**SYNTH, "out": tmp_path, "codec": "topk(ratio=0.25)"}),
                   progress=False, log=lines.append)
    assert any(ln.startswith("hint: topk(ratio=0.25) without error feedback")
               for ln in "\n".join(lines).splitlines())


def test_momentum_correction_is_dgc_around_any_codec():
    """u = m*u + g; v = u + residual; send top-k of v; residual = v - sent; u = 0 where sent."""
    torch.manual_seed(0)
    codec = make_codec("topk(k=2,method=torch)", True, momentum=0.9)
    assert isinstance(codec, ErrorFeedback) and "momentum correction 0.9" in repr(codec)
    state, u, r = {}, torch.zeros(6), torch.zeros(6)
    for _ in range(5):
        g = torch.randn(6)
        _, recon = codec.roundtrip(g, state)
        u = 0.9 * u + g
        v = u + r
        want = torch.zeros(6)
        idx = v.abs().topk(2).indices
        want[idx] = v[idx]
        r = v - want
        u[idx] = 0
        assert torch.allclose(recon, want) and torch.allclose(state["momentum"], u)
    assert isinstance(make_codec("int8", True), ErrorFeedback)
    assert make_codec("int8", True).momentum == 0.0
    assert build(TOPK).sparse and not build("int8").sparse
