"""All nodes' gradients in one call: torch.func.vmap over the node dimension (sync mode).

In sync mode every node holds the same parameters, so the per-node gradients are a vmap of
one gradient function over stacked batches. Models with buffers updated in place (BatchNorm)
cannot be vmapped this way; `node_batching=vmap` refuses them with a clear error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from ..errors import ConfigError

if TYPE_CHECKING:
    from .sim import Simulation

Tensors = dict[str, torch.Tensor]


class VmapGrads:
    def __init__(self, model: torch.nn.Module) -> None:
        if any(True for _ in model.buffers()):
            raise ConfigError("node_batching=vmap needs a model without buffers (BatchNorm); "
                              "use node_batching=loop")
        self.model = model

        def loss(params: Tensors, x: torch.Tensor, y: torch.Tensor):
            out = functional_call(self.model, params, (x,))
            return F.cross_entropy(out, y), out

        self.fn = vmap(grad_and_value(loss, has_aux=True), in_dims=(None, 0, 0))

    def grads(self, batches: list[tuple[torch.Tensor, torch.Tensor]],
              sim: "Simulation") -> list[tuple[Tensors, float]]:
        sizes = {len(y) for _, y in batches}
        if len(sizes) != 1:
            raise ConfigError("node_batching=vmap needs equal batch sizes on every node "
                              "(a shard is smaller than --batch-size); use node_batching=loop")
        params = {n: p.detach() for n, p in sim.params.items()}
        xs = torch.stack([x for x, _ in batches])
        ys = torch.stack([y for _, y in batches])
        grads, (losses, outs) = self.fn(params, xs, ys)
        sim.train_losses.extend(float(v) for v in losses)
        sim.samples += ys.numel()
        conf = outs.detach().softmax(-1).amax(-1).mean(-1)
        return [({n: g[i] for n, g in grads.items()}, float(conf[i])) for i in range(len(batches))]
