"""Defaults that work for sparsifiers (issue 13).

A sparsifying codec (one that declares the `sparse` ability: topk, thresholdv, randomk, dgc)
trains well only with a few settings the plain defaults leave off (bench/RESULTS.md, full
MNIST): one flat payload per message (`pack`: global top-k, no per-tensor metadata), lr 0.1
instead of 0.05, a linear lr warm-up over the first 100 steps (at most half the first epoch,
so a short run still trains at its lr), a x0.1 step decay in the last epoch, and, under
momentum SGD with error feedback, DGC's momentum correction on the nodes. The fp32 broadcast would keep
the total ratio near 2x, so the downlink gets the same sparsifier with the aggregator's own
error feedback. Each is chosen only for a key the user did not set (file, flag, `--set` or
keyword), so `--no-pack` or `--down-codec none` wins; the run header prints what was chosen.
"""

from __future__ import annotations

from typing import Any

from ..codecs import ErrorFeedback, build, make_codec
from ..errors import ConfigError

WARMUP_STEPS = 100
# full MNIST, 4 nodes x 64, 3 epochs, the other defaults on: 98.74% at the plain default lr
# 0.05, 98.87% at 0.1 (mean of seeds 0-2, bench/RESULTS.md "Defaults for sparsifiers")
SPARSE_LR = 0.1


def sparsifier_defaults(data: dict[str, Any], given: set[str]) -> dict[str, Any]:
    """{key: value} to fill in for a config whose settled keys are `data` and whose
    explicitly set keys are `given`; empty unless the upload codec is a sparsifier."""
    if data.get("centralized"):
        return {}
    codec = build(data["codec"])
    if not codec.sparse:
        return {}
    out: dict[str, Any] = {}
    if "pack" not in given:
        out["pack"] = True
    if "lr_warmup" not in given:
        out["lr_warmup"] = WARMUP_STEPS
    if "lr_schedule" not in given:
        out["lr_schedule"] = "step"
    if "lr" not in given:
        out["lr"] = SPARSE_LR
    momentum = data["momentum"]
    if codec.own_feedback and "momentum" not in given and momentum > 0:
        out["momentum"] = 0.0  # dgc keeps the momentum on the nodes already
    elif ("momentum_correction" not in given and data["mode"] == "sync"
          and data["error_feedback"] and momentum > 0):
        out["momentum_correction"] = True
    if "down_codec" not in given:
        down = down_spec(codec, data["codec"])
        if down is not None:
            out["down_codec"] = down
            if "down_error_feedback" not in given:
                out["down_error_feedback"] = True
    return out


def down_spec(codec, spec: str) -> str | None:
    """The broadcast's sparsifier: the upload's own spec, or top-k at dgc's ratio (dgc's
    momentum belongs to the nodes); None when error feedback would not hold around it
    (randomk's unbiased n/k scaling), so the broadcast stays as it was."""
    if codec.own_feedback:
        inner = f"+{codec.inner.spec()}" if codec.inner is not None else ""
        return f"topk(ratio={codec.params.ratio:g}){inner}"
    if codec.feedback_problem() is not None:
        return None
    return spec if isinstance(spec, str) else codec.spec()


def settle_warmup(cfg, steps_per_epoch: int) -> None:
    """A chosen warm-up is at most half the first epoch (the steps are known only once the
    data is): 100 steps on full MNIST, fewer on a small task."""
    auto = cfg._auto
    if "lr_warmup" in auto:
        auto["lr_warmup"] = min(WARMUP_STEPS, max(1, steps_per_epoch // 2))
        cfg.__dict__["lr_warmup"] = auto["lr_warmup"]


def check_momentum_correction(data: dict[str, Any]) -> None:
    """Momentum correction runs inside the nodes' error feedback on sync gradients."""
    if not data.get("momentum_correction"):
        return
    wrapped = isinstance(make_codec(data["codec"], data["error_feedback"]), ErrorFeedback)
    problems = [why for bad, why in (
        (data["mode"] != "sync", f"mode {data['mode']} (it needs sync gradients)"),
        (not wrapped, "a codec without error feedback around it (add --error-feedback "
                      "to a lossy codec; dgc has its own momentum)"),
        (data["momentum"] == 0, "momentum 0 (nothing to correct)")) if bad]
    if problems:
        raise ConfigError("momentum_correction does not fit " + "; ".join(problems))


def describe(auto: dict[str, Any]) -> str:
    """One header line naming every value chosen for the user."""
    parts = []
    if auto.get("pack"):
        parts.append("pack")
    if "lr" in auto:
        parts.append(f"lr {auto['lr']:g}")
    if "lr_warmup" in auto:
        parts.append(f"lr warm-up {auto['lr_warmup']}")
    if auto.get("lr_schedule") == "step":
        parts.append("step decay in last epoch")
    if auto.get("momentum_correction"):
        parts.append("momentum correction on the nodes (aggregator momentum 0)")
    if "momentum" in auto:
        parts.append("aggregator momentum 0 (dgc keeps it on the nodes)")
    if "down_codec" in auto:
        feedback = " with server error feedback" if auto.get("down_error_feedback") else ""
        parts.append(f"down-codec {auto['down_codec']}{feedback}")
    return f"sparsifier defaults: {', '.join(parts)} (set them to override)"


def hint(data: dict[str, Any]) -> str | None:
    """One line for a sparsifier that wants error feedback and runs without it."""
    codec = build(data["codec"])
    if (codec.sparse and codec.wants_error_feedback and not data["error_feedback"]
            and not data.get("centralized")):
        return (f"hint: {codec.spec()} without error feedback drops what it does not send; "
                "add --error-feedback")
    return None
