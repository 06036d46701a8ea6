"""Codec library: tensor <-> self-describing payload, exact wire size, explicit state.

Importing this package registers every codec.
"""

from . import dense, intquant, differential, sign, stochastic, index, sparse, sketch, powersgd  # noqa: F401  (registration side effects)
from .base import Codec, CodecState, Slot
from .endpoint import Decoder, Encoder, decode, make_codec
from .feedback import ErrorFeedback
from .payload import Payload
from .registry import REGISTRY, build, codec_for_payload, lookup, names

__all__ = ["Codec", "CodecState", "Decoder", "Encoder", "ErrorFeedback", "Payload", "REGISTRY",
           "Slot", "build", "codec_for_payload", "decode", "lookup", "make_codec", "names"]
