"""Communicators: how a compressed bucket (DDP) or FSDP unit crosses the ranks.

One small class per communication path, each serving the DDP hook (`average`) and the FSDP
reduce-scatter (`reduce_scatter`), chosen by `communicator_for` from the codec's declared
abilities. Error feedback goes through the library's `ErrorFeedback`; seeds and warm starts
live in `seeds`.
"""

from .allreduce import AllReduce
from .base import Communicator
from .dispatch import DENSE, communicator_for, is_linear
from .gather import Gather
from .int8 import SharedInt8
from .linear import Linear
from .powersgd import PowerSGD
from .seeds import offset_seeds

__all__ = ["DENSE", "AllReduce", "Communicator", "Gather", "Linear", "PowerSGD", "SharedInt8",
           "communicator_for", "is_linear", "offset_seeds"]
