"""Prompt embeddings for routing: mean-pooled last hidden states of the base model.

Each expert publishes the centroid of its training prompts' embeddings; a prompt goes to
the nearest centroid. The base (not the expert) embeds both sides, so a centroid stays
valid however far its expert trains, and routing needs one model, not one per expert.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


@torch.no_grad()
def embed(model: torch.nn.Module, tok: Any, texts: Sequence[str], batch_size: int = 16,
          max_length: int = 128) -> torch.Tensor:
    """(len(texts), hidden) mean of the last hidden state over each text's tokens."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(inner, "model", inner)  # the decoder stack under the LM head
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tok(list(texts[start:start + batch_size]), return_tensors="pt", padding=True,
                  truncation=True, max_length=max_length, add_special_tokens=False)
        hidden = body(input_ids=enc["input_ids"],
                      attention_mask=enc["attention_mask"]).last_hidden_state.float()
        mask = enc["attention_mask"].unsqueeze(-1).float()
        out.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0))
    return torch.cat(out)


def centroid(model: torch.nn.Module, tok: Any, prompts: Sequence[str],
             limit: int = 512) -> torch.Tensor:
    """Mean embedding of (an even sample of at most `limit` of) `prompts`."""
    step = max(len(prompts) // limit, 1)
    return embed(model, tok, list(prompts[::step][:limit])).mean(0)


def nearest(vector: torch.Tensor, centroids: Mapping[str, torch.Tensor]) -> tuple[str, dict]:
    """The name of the closest centroid (Euclidean) and every distance."""
    dist = {n: float(torch.dist(vector.float(), c.float())) for n, c in centroids.items()}
    return min(dist, key=dist.get), dist
