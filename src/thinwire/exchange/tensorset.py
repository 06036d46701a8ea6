"""TensorSet: named tensors with roles, so each role can travel with its own codec.

A node's contribution is more than its gradients: fedavg deltas come with BatchNorm running
statistics (role `buffer`, always lossless), LoRA runs send `adapter` tensors. The role decides
the codec and how the receiver applies the tensor. It travels in the payload's own `role`
field (thinwire.proto; empty for a parameter), so names stay the model's names.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

ROLES = ("param", "buffer", "adapter")
DEFAULT_ROLE = "param"
Tensors = dict[str, torch.Tensor]


def wire_role(role: str) -> str:
    """The payload's role field: empty for a parameter (no bytes on the wire)."""
    return "" if role == DEFAULT_ROLE else role


def role_of(payload_role: str) -> str:
    return payload_role or DEFAULT_ROLE


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

    def items_with_roles(self) -> Iterator[tuple[str, str, torch.Tensor]]:
        """(name, role, tensor) for each tensor."""
        for name, t in self._tensors.items():
            yield name, self._roles[name], t

    def state_dict(self) -> dict:
        return {"tensors": dict(self._tensors), "roles": dict(self._roles)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "TensorSet":
        out = cls()
        for name, t in state["tensors"].items():
            out.add({name: t}, state["roles"][name])
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
    """The layout a receiver checks against: name -> (shape, role)."""
    return {n: (tuple(t.shape), role) for n, role, t in tensors.items_with_roles()}
