"""Bit packing of small unsigned codes into bytes, vectorized (no Python loop over elements)."""

from __future__ import annotations

import torch

from ..errors import CodecError


def packed_len(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack uint8 codes < 2**bits, little-endian within each byte, into ceil(n*bits/8) bytes."""
    codes = codes.reshape(-1).to(torch.uint8)
    n = codes.numel()
    if bits == 8:
        return codes
    if bits in (1, 2, 4):
        per = 8 // bits
        pad = (-n) % per
        if pad:
            codes = torch.cat([codes, codes.new_zeros(pad)])
        groups = codes.view(-1, per)
        out = groups[:, 0].clone()
        for j in range(1, per):  # loop over bit positions in a byte, not over elements
            out |= groups[:, j] << (j * bits)
        return out
    planes = (codes.unsqueeze(1) >> torch.arange(bits, dtype=torch.uint8, device=codes.device)) & 1
    return pack(planes.reshape(-1), 1)[: packed_len(n, bits)]


def unpack(data: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack`: return n uint8 codes."""
    data = data.reshape(-1).view(torch.uint8) if data.dtype != torch.uint8 else data.reshape(-1)
    if data.numel() != packed_len(n, bits):
        raise CodecError(f"packed buffer has {data.numel()} bytes, expected "
                         f"{packed_len(n, bits)} for {n} codes of {bits} bits")
    if bits == 8:
        return data
    if bits in (1, 2, 4):
        mask = (1 << bits) - 1
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=data.device)
        return ((data.unsqueeze(1) >> shifts) & mask).reshape(-1)[:n]
    planes = unpack(data, 1, n * bits).view(n, bits)
    weights = (1 << torch.arange(bits, device=data.device)).to(torch.uint8)
    return (planes * weights).sum(1, dtype=torch.uint8)
