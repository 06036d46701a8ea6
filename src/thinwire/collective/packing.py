"""Payload <-> one flat uint8 tensor on the payload's device, for all-gather / all-to-all.

Collectives move tensors, not protobuf bytes, so a payload tree is packed device-side (no host
round trip for the buffers): an int64 header (per node in pre-order: dtype, shape, buffer dtypes
and sizes, scalar count, seed, part count, codec/params text lengths), the codec and params text,
the fp32 scalars, then every buffer, each starting at an 8-byte boundary so the receiver can
`view` it in place. Only the header and text go through the host (a few dozen bytes); the
receiver reads them with one small device-to-host copy.
"""

from __future__ import annotations

import torch

from ..codecs.payload import CODE_DTYPES, DTYPE_CODES, Payload
from ..codecs.registry import REGISTRY
from ..errors import CodecError

ALIGN = 8
U64 = 1 << 64


def _pad(n: int) -> int:
    return (-n) % ALIGN


def _nodes(p: Payload) -> list[Payload]:
    out = [p]
    for part in p.parts:
        out.extend(_nodes(part))
    return out


def _header(nodes: list[Payload]) -> tuple[list[int], bytes]:
    words: list[int] = [len(nodes)]
    text = b""
    for p in nodes:
        codec, params = p.codec.encode(), p.params.encode()
        seed = int(p.seed)
        words += [DTYPE_CODES[p.dtype], len(p.shape), *map(int, p.shape), len(p.buffers)]
        for b in p.buffers:
            words += [DTYPE_CODES[b.dtype], b.numel()]
        words += [len(p.scalars), seed - U64 if seed >= U64 // 2 else seed, len(p.parts),
                  len(codec), len(params)]
        text += codec + params
    return words, text


def pack(payload: Payload, device: torch.device | None = None) -> torch.Tensor:
    """The payload tree as one 1-D uint8 tensor (its length is what goes on the wire)."""
    nodes = _nodes(payload)
    bufs = [b for p in nodes for b in p.buffers]
    if device is None:
        device = bufs[0].device if bufs else torch.device("cpu")
    words, text = _header(nodes)
    head = torch.tensor([len(words), *words], dtype=torch.int64).view(torch.uint8)
    scalars = torch.tensor([s for p in nodes for s in p.scalars], dtype=torch.float32)
    host = [head, torch.tensor(list(text + bytes(_pad(len(text)))), dtype=torch.uint8),
            scalars.view(torch.uint8)]
    host.append(torch.zeros(_pad(scalars.numel() * 4), dtype=torch.uint8))
    pieces = [torch.cat(host).to(device)]
    for b in bufs:
        raw = b.detach().contiguous().reshape(-1).view(torch.uint8).to(device)
        pieces.append(raw)
        if _pad(raw.numel()):
            pieces.append(torch.zeros(_pad(raw.numel()), dtype=torch.uint8, device=device))
    return torch.cat(pieces)


def unpack(buf: torch.Tensor, name: str = "") -> Payload:
    """Inverse of `pack` (buffers are views into `buf`); raises CodecError if inconsistent."""
    if buf.numel() < 8:
        raise CodecError(f"packed payload of {buf.numel()} bytes is too short")
    head_len = int(buf[:8].view(torch.int64).cpu())
    end = 8 * (1 + head_len)
    if head_len < 1 or end > buf.numel():
        raise CodecError(f"packed payload header of {head_len} words does not fit "
                         f"{buf.numel()} bytes")
    words = buf[8:end].view(torch.int64).tolist()
    nodes, text_len, n_scalars = _parse_header(words)
    text = bytes(buf[end:end + text_len].cpu().tolist())
    pos = end + text_len + _pad(text_len)
    scalars = buf[pos:pos + 4 * n_scalars].view(torch.float32).tolist() if n_scalars else []
    pos += 4 * n_scalars + _pad(4 * n_scalars)
    built, tpos, spos = [], 0, 0
    for node in nodes:
        codec = text[tpos:tpos + node["codec_len"]].decode()
        tpos += node["codec_len"]
        params = text[tpos:tpos + node["params_len"]].decode()
        tpos += node["params_len"]
        buffers = []
        for dtype, numel in node["buffers"]:
            nbytes = numel * dtype.itemsize
            if pos + nbytes > buf.numel():
                raise CodecError("packed payload is truncated")
            buffers.append(buf[pos:pos + nbytes].view(dtype))
            pos += nbytes + _pad(nbytes)
        built.append(Payload(codec=codec, shape=node["shape"], dtype=node["dtype"],
                             params=params, buffers=buffers,
                             scalars=scalars[spos:spos + node["n_scalars"]],
                             seed=node["seed"], parts=[]))
        spos += node["n_scalars"]
    root = _link(built, [n["n_parts"] for n in nodes])
    root.name = name
    return root


def _parse_header(words: list[int]) -> tuple[list[dict], int, int]:
    try:
        count, i, nodes = words[0], 1, []
        for _ in range(count):
            dtype, ndim = CODE_DTYPES[words[i]], words[i + 1]
            shape = tuple(words[i + 2:i + 2 + ndim])
            i += 2 + ndim
            nbuf = words[i]
            buffers = [(CODE_DTYPES[words[i + 1 + 2 * k]], words[i + 2 + 2 * k])
                       for k in range(nbuf)]
            i += 1 + 2 * nbuf
            n_scalars, seed, n_parts, codec_len, params_len = words[i:i + 5]
            i += 5
            nodes.append({"dtype": dtype, "shape": shape, "buffers": buffers,
                          "n_scalars": n_scalars, "seed": seed % U64, "n_parts": n_parts,
                          "codec_len": codec_len, "params_len": params_len})
    except (IndexError, KeyError, ValueError) as exc:
        raise CodecError(f"malformed packed payload header ({exc})") from None
    if any(min(n["shape"] or (0,)) < 0 or n["n_scalars"] < 0 for n in nodes):
        raise CodecError("malformed packed payload header (negative sizes)")
    text_len = sum(n["codec_len"] + n["params_len"] for n in nodes)
    return nodes, text_len, sum(n["n_scalars"] for n in nodes)


def _link(built: list[Payload], n_parts: list[int]) -> Payload:
    """Rebuild the tree from pre-order nodes and their part counts."""
    pos = 0

    def take() -> Payload:
        nonlocal pos
        if pos >= len(built):
            raise CodecError("malformed packed payload (part counts)")
        node, count = built[pos], n_parts[pos]
        pos += 1
        node.parts = [take() for _ in range(count)]
        return node

    root = take()
    if pos != len(built):
        raise CodecError("malformed packed payload (extra nodes)")
    return root


# ---- payload facts used by the metrics ----------------------------------------------------
def _sparse(payload: Payload) -> bool:
    """Indices in the node's buffers, values in its one part (the codec declares `sparse`)."""
    codec = REGISTRY.get(payload.codec)
    return bool(payload.parts) and codec is not None and codec.sparse


def index_bytes(payload: Payload) -> int:
    """Bytes of a sparsifier's own buffers (indices/bitmap), excluding its value part."""
    if _sparse(payload):
        return sum(b.numel() * b.element_size() for b in payload.buffers)
    return 0


def sent_elements(payload: Payload) -> int:
    """Values actually sent: the value part's size for sparsifiers, else every element."""
    if _sparse(payload):
        return payload.parts[0].numel
    return payload.numel


def buffers_of(payload: Payload) -> list[torch.Tensor]:
    return [b for p in _nodes(payload) for b in p.buffers]


def with_buffers(payload: Payload, buffers: list[torch.Tensor]) -> Payload:
    """A copy of the tree with its buffers (in pre-order) replaced, e.g. by summed ones."""
    it = iter(buffers)

    def rebuild(p: Payload) -> Payload:
        return Payload(codec=p.codec, shape=p.shape, dtype=p.dtype, params=p.params,
                       buffers=[next(it) for _ in p.buffers], scalars=list(p.scalars),
                       seed=p.seed, parts=[rebuild(q) for q in p.parts], name=p.name)

    return rebuild(payload)
