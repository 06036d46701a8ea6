"""How a contribution leaves a node and arrives: Sender, Receiver, TensorSet, Transport.

Every runtime moves tensors through these: the simulator over `MemoryTransport`, the service's
workers over `HttpTransport` (exchange/http.py, imported on demand: it needs httpx).
"""

from .receiver import Arrival, Layout, Receiver, Rejected, decode_update
from .sender import Proposal, Sender
from .tensorset import ROLES, TensorSet, layout_of
from .transport import MemoryTransport, Transport

__all__ = ["Arrival", "Layout", "MemoryTransport", "Proposal", "ROLES", "Receiver", "Rejected",
           "Sender", "TensorSet", "Transport", "decode_update", "layout_of"]
