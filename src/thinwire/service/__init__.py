"""FLQ over HTTP: a coordinator (FastAPI) and workers (httpx) for federated training with
lazy, quantized, budgeted uploads; durable state, join/leave, retries, bearer tokens.

Entry points: `thinwire.service.cli.coordinator_main / worker_main / quick_test_main`.
"""

from .config import FLQConfig, load_config

__all__ = ["FLQConfig", "load_config"]
