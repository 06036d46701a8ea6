"""Error types shared by every layer. A user mistake raises one of these with a fix-it message."""

import contextlib
import importlib.util
import sys
from collections.abc import Callable, Iterator


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


class MissingExtra(ThinwireError, ImportError):
    """A command needs a package of an optional extra (`pip install "thinwire[EXTRA]"`)."""


# module -> (its pip name, the extras that install it, its own first); pyproject's
# optional-dependencies hold each of them (tests/test_packaging.py checks it)
OPTIONAL = {
    "fastapi": ("fastapi", "service", "dashboard", "experts"),
    "starlette": ("fastapi", "service", "dashboard", "experts"),
    "uvicorn": ("uvicorn", "service", "dashboard", "experts"),
    "h11": ("h11", "service", "experts"),
    "httpx": ("httpx", "service", "experts"),
    "safetensors": ("safetensors", "service", "swarm", "lm", "experts"),
    "zmq": ("pyzmq", "swarm"),
    "transformers": ("transformers", "lm", "experts"),
    "tokenizers": ("tokenizers", "lm", "experts"),
    "huggingface_hub": ("huggingface_hub", "lm", "experts"),
    "ijson": ("ijson", "lm", "experts"),
    "peft": ("peft", "experts"),
    "modelscope": ("modelscope", "modelscope"),
    "matplotlib": ("matplotlib", "plots", "service", "lm", "experts"),
    "psutil": ("psutil", "dashboard"),
    "pynvml": ("nvidia-ml-py", "dashboard"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlxtend": ("mlxtend", "data"),
    "flwr": ("flwr", "flower"),
}


def missing_extra(module: str, extra: str | None = None, what: str = "this") -> MissingExtra:
    """The one-line error for a missing optional `module`: `extra` when it installs the
    module (the command's own extra), else the module's own extra."""
    top = module.split(".")[0]
    pip_name, *extras = OPTIONAL.get(top, (top, extra or "all"))
    chosen = extra if extra in extras else extras[0]
    return MissingExtra(f'{what} needs {pip_name}: pip install "thinwire[{chosen}]"')


def require(module: str, extra: str | None = None, what: str = "this") -> None:
    """Raise MissingExtra unless `module` can be imported (looked up, not imported)."""
    try:
        found = (sys.modules[module] is not None if module in sys.modules
                 else importlib.util.find_spec(module) is not None)
    except (ImportError, ValueError):
        found = False
    if not found:
        raise missing_extra(module, extra, what)


def have(module: str) -> bool:
    """Whether an optional `module` can be imported (looked up, not imported)."""
    try:
        require(module)
    except MissingExtra:
        return False
    return True


@contextlib.contextmanager
def needs(extra: str | None, what: str) -> Iterator[None]:
    """Turn an import of a missing optional package (OPTIONAL) inside into MissingExtra."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in OPTIONAL:
            raise
        raise missing_extra(exc.name or "", extra, what) from None


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
