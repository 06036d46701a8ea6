"""thinwire: train PyTorch models together over thin links."""

__version__ = "0.1.0"
