"""Bounds applied to untrusted bytes before anything is allocated from them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WireLimits:
    max_elements: int = 1 << 28       # per tensor (shape product)
    max_total_elements: int = 1 << 31  # per message
    max_tensors: int = 100_000
    max_depth: int = 4                 # nesting of payload parts
    max_message_bytes: int = 1 << 31
