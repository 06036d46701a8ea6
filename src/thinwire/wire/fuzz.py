"""Seeds and mutators for fuzzing the parse layer (tests/test_wire_fuzz.py, bench/fuzz_wire.py).

The property: any bytes given to `parse_update` followed by decoding every tensor either
succeed or raise WireError/CodecError. Byte-level mutations mostly test the protobuf parser;
field-level ones (a dim, a params string, a buffer's length, a codec name) keep the message
well-formed so the codecs' own checks and decoders are reached.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

from ..codecs import Decoder, Encoder, make_codec
from ..codecs.registry import names
from ..errors import CodecError, WireError
from . import thinwire_pb2 as pb
from .limits import WireLimits
from .messages import Update, parse_update, serialize_update

# Index codings and value codecs the examples of tests/codec_cases.py do not reach.
EXTRA_SPECS = ("topk(ratio=0.1,index=bitmap+zlib)+int8", "topk(ratio=0.2,index=varint+zlib)+qsgd",
               "topk(ratio=0.3,index=raw)+fp16", "topk(ratio=0.1,index=bitmap)+signsgd",
               "thresholdv(v=0.5,index=raw+zlib)+int8(num_bits=4)", "randomk(ratio=0.2)+bf16",
               "int8(block=8,num_bits=3)", "powersgd(rank=1)")
# Small enough that a mutated shape cannot make one case allocate much.
LIMITS = WireLimits(max_elements=1 << 20, max_total_elements=1 << 22)
PARAMS = ("", "index=raw", "index=bitmap+zlib", "index=varint", "index=zz", "num_bits=3",
          "num_bits=99", "block=7", "rows=3,cols=64,heavy=8", "cols=0", "rank=2,raw=true",
          "levels=1", "scale=none", "bits=1", "unbiased=false", "k=1", "=", "a=(", "index=")
DIMS = (0, 1, 2, 7, 64, 1000, 1 << 20, 1 << 31, 2**63 - 1, 2**64 - 1)


def seed_updates(specs: Sequence[str]) -> list[bytes]:
    """One valid serialized Update per spec, each carrying a 2-D and a 1-D tensor."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for spec in specs:
        enc = Encoder(make_codec(spec))
        tensors = [enc.encode(torch.randn(8, 5, generator=gen), name="w"),
                   enc.encode(torch.randn(33, generator=gen), name="b")]
        out.append(serialize_update(Update(node_id="n", tensors=tensors, round=1)))
    return out


def parse_and_decode(data: bytes, limits: WireLimits = LIMITS) -> str:
    """'ok', 'wire' or 'codec'; any other exception propagates (a bug the fuzzer found)."""
    try:
        update = parse_update(data, limits)
        decoder = Decoder()
        for t in update.tensors:
            decoder.decode(t)
    except WireError:
        return "wire"
    except CodecError:
        return "codec"
    return "ok"


# ---- byte-level mutations ---------------------------------------------------------------------
def mutate_bytes(data: bytes, rng: random.Random, pool: Sequence[bytes] = ()) -> bytes:
    """1-6 random edits: set, flip, insert, delete, duplicate, splice from the pool, cut."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op, pos = rng.random(), rng.randrange(len(buf) + 1)
        if op < 0.3 and pos < len(buf):
            buf[pos] = rng.randrange(256)
        elif op < 0.45 and pos < len(buf):
            buf[pos] ^= 1 << rng.randrange(8)
        elif op < 0.6:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 4))
        elif op < 0.75:
            del buf[pos:pos + rng.randint(1, 16)]
        elif op < 0.85:
            buf[pos:pos] = buf[pos:pos + rng.randint(1, 32)]
        elif op < 0.95 and pool:
            other = rng.choice(pool)
            start = rng.randrange(len(other) + 1)
            buf[pos:] = other[start:start + rng.randint(1, 64)] + buf[pos:]
        else:
            del buf[pos:]
    return bytes(buf)


# ---- field-level mutations --------------------------------------------------------------------
def _payloads(msg: pb.Update) -> list[pb.TensorPayload]:
    out, todo = [], list(msg.tensors)
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(p.parts)
    return out


def _shape(p: pb.TensorPayload, rng: random.Random) -> None:
    if p.shape and rng.random() < 0.7:
        p.shape[rng.randrange(len(p.shape))] = rng.choice(DIMS)
    else:
        p.shape.append(rng.choice(DIMS))


def _buffer(p: pb.TensorPayload, rng: random.Random) -> None:
    if not p.buffers:
        p.buffers.add(dtype=rng.randrange(12), data=rng.randbytes(rng.randrange(64)))
        return
    b = p.buffers[rng.randrange(len(p.buffers))]
    cut = rng.randrange(len(b.data) + 1)
    b.data = rng.choice([b.data[:cut], b.data + rng.randbytes(rng.randint(1, 9)),
                         rng.randbytes(len(b.data)), b.data])
    if rng.random() < 0.3:
        b.dtype = rng.randrange(12)


def _parts(p: pb.TensorPayload, rng: random.Random) -> None:
    if p.parts and rng.random() < 0.5:
        del p.parts[rng.randrange(len(p.parts))]
    else:
        p.parts.append(p.parts[0] if p.parts and rng.random() < 0.5 else pb.TensorPayload(
            codec=rng.choice(names()), dtype=1, shape=[rng.choice(DIMS[:5])]))


FIELD_EDITS: tuple[Callable[[pb.TensorPayload, random.Random], None], ...] = (
    _shape, _buffer, _parts,
    lambda p, rng: setattr(p, "params", rng.choice(PARAMS)),
    lambda p, rng: setattr(p, "codec", rng.choice(names() + ["", "nope"])),
    lambda p, rng: setattr(p, "dtype", rng.randrange(12)),
    lambda p, rng: p.scalars.append(rng.choice([0.0, -1.0, 1e38, float("inf"), float("nan")])),
    lambda p, rng: setattr(p, "seed", rng.randrange(2**64)),
    lambda p, rng: p.shape.pop() if p.shape else None,
)


def mutate_fields(data: bytes, rng: random.Random) -> bytes:
    """Parse a valid Update, change 1-3 fields of its tensors or parts, serialize again."""
    msg = pb.Update()
    msg.ParseFromString(data)
    for _ in range(rng.randint(1, 3)):
        target = rng.choice(_payloads(msg))
        rng.choice(FIELD_EDITS)(target, rng)
    return msg.SerializeToString()


def mutate(data: bytes, rng: random.Random, pool: Sequence[bytes] = ()) -> bytes:
    """Field-level edits half the time (they reach the codecs), byte-level otherwise."""
    if rng.random() < 0.5:
        return mutate_fields(data, rng)
    return mutate_bytes(data, rng, pool)
