"""How well a model predicts a prompt: the mean next-token loss of the prompt's own tokens.

Loss routing (Branch-Train-Merge's domain posterior, Li et al. 2022) scores a prompt under each
expert and picks the lowest loss. Only the prompt's tokens count: the chat template's fixed
tokens would add the same per-expert offset to every prompt, which can outweigh the prompt.
They are kept as context before it, so the first prompt token is predicted as in training.
"""

from __future__ import annotations

from typing import Any

import torch

SENTINEL = "\x00thinwire-prompt\x00"


def template_prefix(tok: Any) -> str:
    """What the chat template puts before a user prompt ('' without a template)."""
    if not getattr(tok, "chat_template", None):
        return ""
    head = tok.apply_chat_template([{"role": "user", "content": SENTINEL}], tokenize=False,
                                   add_generation_prompt=True)
    return head.split(SENTINEL)[0]


def prompt_ids(tok: Any, prompt: str, max_length: int = 256,
               prefix: str | None = None) -> tuple[list[int], int]:
    """(token ids of prefix + prompt, index of the prompt's first token); the prompt is cut
    to `max_length` tokens."""
    prefix = template_prefix(tok) if prefix is None else prefix
    head = tok(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    body = tok(prompt, add_special_tokens=False)["input_ids"][:max_length]
    return head + body, len(head)


@torch.no_grad()
def prompt_loss(model: torch.nn.Module, ids: list[int], start: int) -> float:
    """Mean next-token NLL of `ids[start:]` (from the second token when `start` is 0)."""
    if len(ids) < 2 or start >= len(ids):
        return 0.0
    x = torch.tensor([ids])
    logits = model(input_ids=x).logits[0, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="none")
    return float(nll[max(start, 1) - 1:].mean())
