"""Entry points the top-level CLI wires as `thinwire coordinator|worker|quick-test`."""

from __future__ import annotations

import sys
from collections.abc import Callable

from ..errors import ThinwireError

Main = Callable[[list[str] | None], int]


def run_main(main: Main, argv: list[str] | None = None) -> int:
    """Run an entry point; a user mistake prints one line and exits 2."""
    try:
        return main(argv)
    except ThinwireError as exc:
        print(f"thinwire: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("thinwire: interrupted", file=sys.stderr)
        return 130


def coordinator_main(argv: list[str] | None = None) -> int:
    from .coordinator import coordinator_main as main

    return main(argv)


def worker_main(argv: list[str] | None = None) -> int:
    from .worker import worker_main as main

    return main(argv)


def quick_test_main(argv: list[str] | None = None) -> int:
    from .quick_test import quick_test_main as main

    return main(argv)
