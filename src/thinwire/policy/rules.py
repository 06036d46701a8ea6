"""Per-node upload decisions. Each policy keeps its own per-node state (checkpointable).

A skipped upload is not lost work: the aggregator reuses the node's last contribution (or drops
it, by configuration), and the node's encoder state is left untouched.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError


@dataclass
class SendContext:
    step: int                              # the node's step (sync) or round (fedavg) index
    grad_norm: float | None = None         # ||g|| of the update about to be sent
    confidence: float | None = None        # mean max-softmax on the current batch
    innovation_sq: float | None = None     # ||Q(g_k) - Q(g_last sent)||^2
    error_sq: float | None = None          # ||g_k - Q(g_k)||^2 (quantization error)


class SendPolicy:
    name = "policy"
    needs_encoding = False  # True: the caller must encode first (innovation, error) to decide

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def decide(self, ctx: SendContext) -> tuple[bool, str]:
        """Return (send?, reason)."""
        raise NotImplementedError

    def sent(self, ctx: SendContext) -> None:
        """Record that the update of `ctx` went out."""

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = dict(state)


class Always(SendPolicy):
    name = "always"

    def decide(self, ctx: SendContext) -> tuple[bool, str]:
        return True, "always"


class EveryK(SendPolicy):
    name = "every"

    def __init__(self, k: int) -> None:
        super().__init__()
        if k < 1:
            raise ConfigError(f"every:K needs K >= 1, got {k}")
        self.k = k

    def decide(self, ctx: SendContext) -> tuple[bool, str]:
        return ctx.step % self.k == 0, f"every:{self.k}"


class Trigger(SendPolicy):
    """The design's dynamic trigger: send on a grad-norm change, low confidence or a timeout."""

    name = "trigger"

    def __init__(self, grad_norm_threshold: float = 0.15, confidence_threshold: float = 0.7,
                 sync_interval: int = 5) -> None:
        super().__init__()
        if sync_interval < 1:
            raise ConfigError("communication.sync_interval must be >= 1")
        self.grad_norm_threshold = grad_norm_threshold
        self.confidence_threshold = confidence_threshold
        self.sync_interval = sync_interval

    def decide(self, ctx: SendContext) -> tuple[bool, str]:
        last = self.state.get("last_norm")
        if last is None:
            return True, "first"
        if ctx.step - self.state["last_step"] >= self.sync_interval:
            return True, "interval"
        if ctx.grad_norm is not None and last > 0:
            if abs(ctx.grad_norm - last) / last >= self.grad_norm_threshold:
                return True, "grad_norm"
        if ctx.confidence is not None and ctx.confidence < self.confidence_threshold:
            return True, "confidence"
        return False, "skip"

    def sent(self, ctx: SendContext) -> None:
        self.state["last_norm"] = ctx.grad_norm
        self.state["last_step"] = ctx.step


class ModelDiffHistory:
    """||theta_{k+1-d} - theta_{k-d}||^2 for the last D model changes (shared by all nodes)."""

    def __init__(self, depth: int = 10) -> None:
        self.diffs: deque[float] = deque(maxlen=depth)

    def push(self, diff_sq: float) -> None:
        self.diffs.appendleft(float(diff_sq))

    def state_dict(self) -> dict[str, Any]:
        return {"depth": self.diffs.maxlen, "diffs": list(self.diffs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.diffs = deque(state["diffs"], maxlen=state["depth"])


class LAQRule(SendPolicy):
    """LAQ (Sun et al., NeurIPS 2019): upload iff

        ||Q(g_k) - Q(g_last)||^2 >= thr_scale/(alpha^2 M^2) * sum_d xi_d ||dtheta_d||^2
                                    + 3 (||eps_k||^2 + ||eps_last||^2)

    or the node's clock reaches t_bar; the first `warmup` steps always upload.
    """

    name = "laq"
    needs_encoding = True

    def __init__(self, history: ModelDiffHistory, alpha: float, workers: int, depth: int = 10,
                 xi: float | None = None, t_bar: int = 100, thr_scale: float = 1.0,
                 warmup: int = 1) -> None:
        super().__init__()
        if alpha <= 0 or workers < 1 or depth < 1 or t_bar < 1:
            raise ConfigError("laq needs alpha > 0, workers >= 1, depth >= 1, t_bar >= 1")
        self.history = history
        self.alpha, self.workers, self.depth = alpha, workers, depth
        self.xi = xi if xi is not None else 0.8 / depth
        self.t_bar, self.thr_scale, self.warmup = t_bar, thr_scale, warmup

    def threshold(self, error_sq: float) -> float:
        drift = self.xi * sum(list(self.history.diffs)[: self.depth])
        lazy = self.thr_scale * drift / (self.alpha ** 2 * self.workers ** 2)
        return lazy + 3.0 * (error_sq + self.state.get("last_error_sq", 0.0))

    def decide(self, ctx: SendContext) -> tuple[bool, str]:
        if ctx.innovation_sq is None or ctx.error_sq is None:
            raise ValueError("LAQRule needs innovation_sq and error_sq (encode first)")
        if ctx.step < self.warmup or "clock" not in self.state:
            return True, "warmup"
        if self.state["clock"] >= self.t_bar:
            return True, "clock"
        if ctx.innovation_sq >= self.threshold(ctx.error_sq):
            return True, "innovation"
        self.state["clock"] += 1
        return False, "lazy"

    def sent(self, ctx: SendContext) -> None:
        self.state["clock"] = 1
        self.state["last_error_sq"] = float(ctx.error_sq or 0.0)


def make_policy(spec: str, communication: dict[str, Any] | None = None,
                laq: dict[str, Any] | None = None, history: ModelDiffHistory | None = None,
                alpha: float = 0.1, workers: int = 1) -> SendPolicy:
    """`always`, `every:K`, `trigger` (with communication.*), `laq` (with laq.*)."""
    text = spec.strip().lower()
    if text == "always":
        return Always()
    if text.startswith("every:"):
        try:
            return EveryK(int(text.split(":", 1)[1]))
        except ValueError:
            raise ConfigError(f"policy {spec!r}: K must be an integer, e.g. every:4") from None
    if text == "trigger":
        return Trigger(**(communication or {}))
    if text == "laq":
        return LAQRule(history or ModelDiffHistory(), alpha=alpha, workers=workers,
                       **(laq or {}))
    raise ConfigError(f"unknown policy {spec!r}; valid: always, every:K, trigger, laq")
