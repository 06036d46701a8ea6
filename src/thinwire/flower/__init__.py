"""thinwire inside a Flower app (flwr>=1.41, Message API): `pip install "thinwire[flower]"`.

    from thinwire.flower import ThinwireStrategy, thinwire_mod
    app = ClientApp(mods=[thinwire_mod("topk(ratio=0.01)+int8")])          # client_app.py
    strategy = ThinwireStrategy(FedAvg(), codec="topk(ratio=0.01)+int8")   # server_app.py

`thinwire_mod` (mod.py) sends each train reply's update through a thinwire codec with error
feedback kept in the node's Context; `ThinwireStrategy` (strategy.py) decodes replies before
the wrapped strategy aggregates, optionally compresses the downlink, and counts Flower's own
message bytes per round. `run_inprocess` (inprocess.py) runs a ServerApp and ClientApp in
this process without Ray. examples/flower/ is a runnable app.
"""

from __future__ import annotations

from typing import Any

try:
    import flwr  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("thinwire.flower needs Flower: pip install 'thinwire[flower]' "
                      "(flwr>=1.41,<2)") from exc

from .mod import DownlinkMismatch, thinwire_mod
from .records import message_nbytes
from .strategy import ThinwireStrategy


def __getattr__(name: str) -> Any:
    if name in ("run_inprocess", "InProcessBackend"):
        from . import inprocess

        return getattr(inprocess, name)
    raise AttributeError(name)


__all__ = ["DownlinkMismatch", "InProcessBackend", "ThinwireStrategy", "message_nbytes",
           "run_inprocess", "thinwire_mod"]
