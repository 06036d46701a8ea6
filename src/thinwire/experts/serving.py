"""What the coordinator serves beyond the workers' protocol: merged weights (the gateway,
each expert on the base), the base's config and tokenizer files, and routing (by centroid
or by each expert's loss on the prompt: routing.py).

Mixed into `ExpertsCoordinator`, whose lock, experts, gateway and base it reads.
"""

from __future__ import annotations

from typing import Any

import torch

from ..server import HttpError
from ..tasks.lm.embed import embed, nearest
from ..tasks.lm.merge import apply
from ..tasks.lm.pretrained import base_files
from .config import ROUTING
from .gateway import weights_body
from .routing import LossRouter


class Serving:
    cfg: Any
    lock: Any
    embed_lock: Any
    base: Any
    base_state: dict[str, torch.Tensor]
    experts: dict[str, Any]
    workers: dict[str, dict[str, Any]]
    gateway: Any
    _files: dict[str, str] | None
    _router: LossRouter | None = None

    def gateway_body(self) -> tuple[bytes, int]:
        with self.lock:
            return self.gateway.body(), self.gateway.version

    def expert_body(self, name: str) -> tuple[bytes, int]:
        with self.lock:
            expert = self.experts.get(name)
            if expert is None:
                raise HttpError(404, f"no expert {name!r}; experts: {sorted(self.experts)}")
            state = apply(self.base_state, self.gateway.expert_delta(expert))
            meta = {"kind": "expert", "name": name, "version": str(expert.version)}
            return weights_body(state, meta), expert.version

    def files(self) -> dict[str, str]:
        """The base's config and tokenizer files (base64), for clients that rebuild it."""
        if self._files is None:
            self._files = base_files(self.base)
        return self._files

    def centroids(self) -> dict[str, torch.Tensor]:
        """Each expert's centroid: its workers' centroids weighted by their prompt counts."""
        with self.lock:
            out: dict[str, list] = {}
            for info in self.workers.values():
                out.setdefault(info["specialty"], []).append((info["centroid"], info["count"]))
        return {n: sum(c * k for c, k in pairs) / sum(k for _, k in pairs)
                for n, pairs in out.items()}

    def route(self, prompt: str, method: str | None = None) -> dict[str, Any]:
        """The expert for `prompt` by `method` (the config's `routing` by default), with
        every expert's score (lower is better): centroid distances or prompt losses."""
        method = method or self.cfg.routing
        if method not in ROUTING:
            raise HttpError(400, f"routing method {method!r}: use one of {', '.join(ROUTING)}")
        scores = self._loss_scores(prompt) if method == "loss" else self._distances(prompt)
        name = min(scores, key=scores.get)
        reply = {"expert": name, "version": self.experts[name].version, "method": method,
                 "scores": scores}
        if method == "centroid":
            return reply | {"distances": scores}
        if not self.cfg.prompt_loss:
            reply["warning"] = ("the experts were trained on answers only (prompt_loss off): "
                                "their prompt losses barely tell specialties apart")
        return reply | {"losses": scores}

    def _distances(self, prompt: str) -> dict[str, float]:
        centroids = self.centroids()
        if not centroids:
            raise HttpError(409, "no expert has a centroid yet: start a worker first")
        with self.embed_lock:
            vector = embed(self.base.model, self.base.tokenizer, [prompt])[0]
        return nearest(vector, centroids)[1]

    def _loss_scores(self, prompt: str) -> dict[str, float]:
        with self.lock:
            versions = {n: e.version for n, e in self.experts.items() if e.version > 0}
        if not versions:
            raise HttpError(409, "no expert is trained yet (loss routing scores trained "
                                 "experts): wait for a worker's first round")
        with self.embed_lock:  # the views hook into the shared base model
            return self.loss_router().scores(prompt, versions)

    def loss_router(self) -> LossRouter:
        if self._router is None:
            self._router = LossRouter(self.base, self.base_state, self.cfg.tuning,
                                      self._snapshot)
        return self._router

    def _snapshot(self, name: str) -> tuple[int, dict[str, torch.Tensor]]:
        """An expert's version and a copy of its tensors (the outer step moves them)."""
        with self.lock:
            expert = self.experts[name]
            return expert.version, {n: t.clone() for n, t in expert.tensors.items()}
