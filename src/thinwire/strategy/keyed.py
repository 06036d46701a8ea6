"""KeyedStrategy: one strategy (and so one model's rounds) per key, e.g. per specialty.

A federated-experts coordinator keeps one expert per specialty: contributions are routed by
key, each key combines on its own, and a key's state checkpoints with the rest.
"""

from __future__ import annotations

from collections.abc import Callable

from .strategy import Combined, Contribution, Strategy


class KeyedStrategy:
    def __init__(self, factory: Callable[[], Strategy]) -> None:
        self.factory = factory
        self.strategies: dict[str, Strategy] = {}

    def of(self, key: str) -> Strategy:
        if key not in self.strategies:
            self.strategies[key] = self.factory()
        return self.strategies[key]

    def submit(self, key: str, node: str, contribution: Contribution) -> None:
        self.of(key).submit(node, contribution)

    def result(self, key: str, exclude: set[str] | None = None) -> Combined | None:
        return self.of(key).result(exclude)

    def keys(self) -> list[str]:
        return sorted(self.strategies)

    def state_dict(self) -> dict:
        return {k: s.state_dict() for k, s in self.strategies.items()}

    def load_state_dict(self, state: dict) -> None:
        for key, s in state.items():
            self.of(key).load_state_dict(s)
