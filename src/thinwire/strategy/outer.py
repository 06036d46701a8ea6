"""The outer step: the server applies a combined pseudo-gradient through an optimizer.

With local steps (fedavg, DiLoCo) each node sends delta = theta_local - theta_start; the
server treats -mean(delta) as a gradient for an outer SGD (Douillard et al. 2023, DiLoCo: lr
0.7, Nesterov momentum 0.9). lr 1 without momentum is plain FedAvg: theta += mean(delta),
bit for bit. The optimizer's momentum is state, checkpointed with the rest.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..exchange.tensorset import TensorSet


class OuterOptimizer:
    def __init__(self, params: Mapping[str, torch.Tensor], lr: float = 1.0,
                 momentum: float = 0.0, nesterov: bool = False) -> None:
        self.params = dict(params)
        self.plain = lr == 1.0 and momentum == 0.0
        self.opt = torch.optim.SGD(list(self.params.values()), lr=lr, momentum=momentum,
                                   nesterov=nesterov and momentum > 0)

    @torch.no_grad()
    def step(self, delta: TensorSet) -> None:
        """theta <- theta - outer_opt(-delta); plain FedAvg adds the delta directly."""
        if self.plain:
            for name, p in self.params.items():
                p.add_(delta[name].to(p.dtype))
            return
        saved = {n: p.grad for n, p in self.params.items()}
        for name, p in self.params.items():
            p.grad = -delta[name].to(p.dtype)
        self.opt.step()
        for name, p in self.params.items():
            p.grad = saved[name]

    def state_dict(self) -> dict:
        return self.opt.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Also from JSON (a snapshot's tree), whose keys are strings: torch matches the
        per-parameter state by the integer ids in param_groups."""
        self.opt.load_state_dict({"state": {int(k): v for k, v in state["state"].items()},
                                  "param_groups": state["param_groups"]})
