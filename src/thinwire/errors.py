"""Error types shared by every layer. A user mistake raises one of these with a fix-it message."""

import sys
from collections.abc import Callable


class ThinwireError(Exception):
    """Base class: the CLI prints these as one line instead of a traceback."""


class ConfigError(ThinwireError, ValueError):
    """A bad codec spec, config key or value."""


class CodecError(ThinwireError, ValueError):
    """A tensor a codec cannot encode (NaN/Inf, integer dtype) or a payload it cannot decode."""


class WireError(ThinwireError, ValueError):
    """Bytes from the wire that are malformed, truncated, oversized or inconsistent."""


class DataError(ThinwireError, ValueError):
    """Missing, truncated or corrupt data files."""


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a command entry point; a user mistake prints one line and exits 2."""
    try:
        return main(argv)
    except ThinwireError as exc:
        print(f"thinwire: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("thinwire: interrupted", file=sys.stderr)
        return 130
