"""TensorSet: named tensors with roles, so each role can travel with its own codec.

A node's contribution is more than its gradients: fedavg deltas come with BatchNorm running
statistics (role `buffer`, always lossless), LoRA runs send `adapter` tensors. The role decides
the codec and how the receiver applies the tensor; it used to hide in a "buffer:" name prefix
spread over eleven call sites. The prefix now lives only here, as the wire spelling of a role
(`wire_name` / `from_wire_name`), so a receiver built from any version still decodes it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

ROLES = ("param", "buffer", "adapter")
DEFAULT_ROLE = "param"
Tensors = dict[str, torch.Tensor]


def wire_name(name: str, role: str) -> str:
    """The payload name on the wire: the plain name for params, `role:name` otherwise."""
    return name if role == DEFAULT_ROLE else f"{role}:{name}"


def from_wire_name(wire: str) -> tuple[str, str]:
    """(name, role) of a payload name; an unknown prefix is part of the name."""
    head, sep, rest = wire.partition(":")
    if sep and head in ROLES and head != DEFAULT_ROLE:
        return rest, head
    return wire, DEFAULT_ROLE


class TensorSet(Mapping[str, torch.Tensor]):
    """An ordered mapping name -> tensor, each with a role (param by default)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor] | None = None,
                 role: str = DEFAULT_ROLE) -> None:
        self._tensors: Tensors = {}
        self._roles: dict[str, str] = {}
        if tensors:
            self.add(tensors, role)

    def add(self, tensors: Mapping[str, torch.Tensor], role: str = DEFAULT_ROLE) -> "TensorSet":
        if role not in ROLES:
            raise ValueError(f"tensor role {role!r}: use one of {ROLES}")
        for name, t in tensors.items():
            self._tensors[name] = t
            self._roles[name] = role
        return self

    def role(self, name: str) -> str:
        return self._roles[name]

    def of(self, role: str) -> Tensors:
        """The tensors of one role, in insertion order."""
        return {n: t for n, t in self._tensors.items() if self._roles[n] == role}

    @property
    def params(self) -> Tensors:
        return self.of("param")

    @property
    def buffers(self) -> Tensors:
        return self.of("buffer")

    def wire_items(self) -> Iterator[tuple[str, str, torch.Tensor]]:
        """(wire name, role, tensor) for each tensor."""
        for name, t in self._tensors.items():
            yield wire_name(name, self._roles[name]), self._roles[name], t

    def to_wire(self) -> Tensors:
        """wire name -> tensor (the inverse of `from_wire`)."""
        return {w: t for w, _, t in self.wire_items()}

    @classmethod
    def from_wire(cls, decoded: Mapping[str, torch.Tensor]) -> "TensorSet":
        out = cls()
        for wire, t in decoded.items():
            name, role = from_wire_name(wire)
            out.add({name: t}, role)
        return out

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        return f"TensorSet({', '.join(f'{n}:{self._roles[n]}' for n in self._tensors)})"


def layout_of(tensors: TensorSet) -> dict[str, tuple[tuple[int, ...], str]]:
    """The wire layout a receiver checks against: wire name -> (shape, role)."""
    return {w: (tuple(t.shape), role) for w, role, t in tensors.wire_items()}
