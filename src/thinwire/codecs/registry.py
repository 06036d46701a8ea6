"""Name -> codec class, spec -> codec instance, payload -> the codec that decodes it."""

from __future__ import annotations

from typing import Any

from ..errors import CodecError, ConfigError
from .base import Codec
from .payload import Payload
from .spec import parse, parse_params

REGISTRY: dict[str, type[Codec]] = {}


def register(cls: type[Codec]) -> type[Codec]:
    if cls.name in REGISTRY:
        raise RuntimeError(f"codec '{cls.name}' registered twice")
    if set(cls.decode_keys) - set(cls.Params.model_fields):
        raise RuntimeError(f"codec '{cls.name}' decode_keys must be parameters")
    REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    return sorted(REGISTRY)


def lookup(name: str) -> type[Codec]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown codec '{name}'; valid codecs: {', '.join(names())}") from None


def build(spec: str | dict | list | Codec, extra: dict[str, Any] | None = None) -> Codec:
    """Build a codec chain from a spec (`topk(ratio=0.01)+int8`, JSON, or a Codec).

    `extra` (e.g. from `--comm-config-json`) adds parameters to the first stage.
    """
    if isinstance(spec, Codec):
        return spec
    stages = parse(spec)
    if extra:
        stages[0] = (stages[0][0], {**stages[0][1], **extra})
    codec: Codec | None = None
    for stage_name, params in reversed(stages):
        codec = lookup(stage_name).from_params(params, inner=codec)
    assert codec is not None
    return codec


def codec_for_payload(payload: Payload, cache: dict[tuple, Codec] | None = None) -> Codec:
    """The receiving side of a self-describing payload (raises CodecError on bad metadata)."""
    key = _signature(payload)
    if cache is not None and key in cache:
        return cache[key]
    cls = REGISTRY.get(payload.codec)
    if cls is None:
        raise CodecError(f"unknown codec '{payload.codec}' in payload; this build knows "
                         f"{', '.join(names())}")
    try:
        params = parse_params(payload.params, payload.codec)
    except ConfigError as exc:
        raise CodecError(f"bad params {payload.params!r}: {exc}") from None
    unexpected = set(params) - set(cls.decode_keys)
    if unexpected:
        raise CodecError(f"payload params {sorted(unexpected)} are not decode parameters of "
                         f"'{cls.name}' (expected {list(cls.decode_keys)})")
    inner = None
    if cls.takes_inner:
        if len(payload.parts) != 1:
            raise CodecError(f"'{cls.name}' payload needs exactly one value part, "
                             f"got {len(payload.parts)}")
        inner = codec_for_payload(payload.parts[0], cache)
    elif payload.parts:
        raise CodecError(f"'{cls.name}' payloads carry no parts, got {len(payload.parts)}")
    try:
        codec = cls.from_params(params, inner)
    except ConfigError as exc:
        raise CodecError(str(exc)) from None
    if cache is not None:
        cache[key] = codec
    return codec


def _signature(p: Payload) -> tuple:
    return (p.codec, p.params, tuple(_signature(q) for q in p.parts))
