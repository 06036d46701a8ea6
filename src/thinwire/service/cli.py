"""Entry points the top-level CLI wires as `thinwire coordinator|worker|quick-test`."""

from __future__ import annotations


def coordinator_main(argv: list[str] | None = None) -> int:
    from .coordinator import coordinator_main as main

    return main(argv)


def worker_main(argv: list[str] | None = None) -> int:
    from .worker import worker_main as main

    return main(argv)


def quick_test_main(argv: list[str] | None = None) -> int:
    from .quick_test import quick_test_main as main

    return main(argv)
