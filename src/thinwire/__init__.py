"""thinwire: train PyTorch models together over thin links.

    import thinwire
    row = thinwire.simulate(model=make_net, train=(x, y), test=(xt, yt), nodes=4,
                            codec="topk(ratio=0.01)+int8", epochs=3)
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["simulate"]


def __getattr__(name: str) -> Any:
    """`thinwire.simulate` imports torch on first use, not on `import thinwire` (the CLI)."""
    if name == "simulate":
        from .api import simulate

        return simulate
    raise AttributeError(f"module 'thinwire' has no attribute {name!r}")
