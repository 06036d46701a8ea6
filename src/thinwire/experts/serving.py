"""What the coordinator serves beyond the workers' protocol: merged weights (the gateway,
each expert on the base), the base's config and tokenizer files, and routing.

Mixed into `ExpertsCoordinator`, whose lock, experts, gateway and base it reads.
"""

from __future__ import annotations

from typing import Any

import torch

from ..server import HttpError
from ..tasks.lm.embed import embed, nearest
from ..tasks.lm.merge import apply
from ..tasks.lm.pretrained import base_files
from .gateway import weights_body


class Serving:
    lock: Any
    embed_lock: Any
    base: Any
    base_state: dict[str, torch.Tensor]
    experts: dict[str, Any]
    workers: dict[str, dict[str, Any]]
    gateway: Any
    _files: dict[str, str] | None

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

    def route(self, prompt: str) -> dict[str, Any]:
        centroids = self.centroids()
        if not centroids:
            raise HttpError(409, "no expert has a centroid yet: start a worker first")
        with self.embed_lock:
            vector = embed(self.base.model, self.base.tokenizer, [prompt])[0]
        name, dist = nearest(vector, centroids)
        return {"expert": name, "version": self.experts[name].version, "distances": dist}
