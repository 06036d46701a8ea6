"""Error types shared by every layer. A user mistake raises one of these with a fix-it message."""


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
