"""The one place that picks a communicator, from the abilities a codec declares.

    not lossy and linear    -> AllReduce   (`none`: the fp32 average is already exact)
    low_rank                -> PowerSGD    (two rounds: the factors of the sum, from sums)
    shared_scale, "shared"  -> SharedInt8  (codes on one agreed grid sum as integers)
    linear through its chain -> Linear     (payload buffers sum; decoded once)
    anything else           -> Gather      (payloads travel whole; decoded per source)

The DDP hook and the FSDP reduce-scatter both ask here, so a codec takes the same path in
both (PowerSGD excepted: FSDP hands over no matrices, and refuses it).
"""

from __future__ import annotations

from ...codecs.base import Codec
from ...errors import ConfigError
from .allreduce import AllReduce
from .base import Communicator
from .gather import Gather
from .int8 import SharedInt8
from .linear import Linear
from .powersgd import PowerSGD

DENSE = AllReduce()  # warm-up steps and buckets not worth compressing
INT8_MODES = ("shared", "per-rank")


def is_linear(codec: Codec) -> bool:
    """Summing payload buffers decodes to the sum, for the whole chain (randomk + fp16 is;
    randomk + int8 is not: per-payload scales do not add)."""
    return codec.linear and (codec.inner is None or is_linear(codec.inner))


def communicator_for(codec: Codec, int8_mode: str = "shared", world: int = 1) -> Communicator:
    """The communicator for `codec` on `world` ranks."""
    if int8_mode not in INT8_MODES:
        raise ConfigError(f"int8_mode must be 'shared' or 'per-rank', got {int8_mode!r}")
    if not codec.lossy and codec.linear:
        return DENSE
    if codec.low_rank:
        return PowerSGD()
    if codec.shared_scale and int8_mode == "shared":
        return SharedInt8(codec, world)
    return Linear() if is_linear(codec) else Gather()
