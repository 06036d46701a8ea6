"""Codec spec strings: `name(key=value,...)` stages joined by `+`, or a JSON form.

    topk(ratio=0.01)+int8          {"method": "int8", "num_bits": 8}
    qsgd(levels=16)                [{"method": "topk", "ratio": 0.01}, {"method": "int8"}]
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import ConfigError

Stage = tuple[str, dict[str, Any]]
_STAGE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.S)


def split_top_level(text: str, sep: str) -> list[str]:
    """Split on `sep` outside parentheses, so commas inside `topk(ratio=0.1,index=raw)` stay."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"unbalanced ')' in {text!r}")
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise ConfigError(f"unbalanced '(' in {text!r}")
    parts.append("".join(cur))
    return parts


def parse_value(raw: str) -> Any:
    """`0.01` -> float, `8` -> int, `true` -> bool, anything else stays a string."""
    text = raw.strip()
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_params(body: str, where: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if not body.strip():
        return params
    for item in split_top_level(body, ","):
        if "=" not in item:
            raise ConfigError(f"{where}: expected key=value, got {item.strip()!r}")
        key, value = item.split("=", 1)
        params[key.strip()] = parse_value(value)
    return params


def _parse_json(text: str) -> list[Stage]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"codec JSON is not valid JSON: {exc}") from None
    items = obj if isinstance(obj, list) else [obj]
    stages: list[Stage] = []
    for item in items:
        if not isinstance(item, dict) or "method" not in item:
            raise ConfigError('codec JSON must be {"method": NAME, ...} or a list of those')
        params = {k: v for k, v in item.items() if k != "method"}
        method = str(item["method"])
        inner = parse(method)
        inner[0][1].update(params) if len(inner) == 1 else inner[-1][1].update(params)
        stages.extend(inner)
    return stages


def parse(spec: str | dict | list) -> list[Stage]:
    """Parse a spec into [(name, params), ...]; raises ConfigError with the offending part."""
    if isinstance(spec, (dict, list)):
        return _parse_json(json.dumps(spec))
    text = str(spec).strip()
    if not text:
        raise ConfigError("empty codec spec; try 'none', 'int8' or 'topk(ratio=0.01)+int8'")
    if text[0] in "{[":
        return _parse_json(text)
    stages: list[Stage] = []
    for part in split_top_level(text, "+"):
        match = _STAGE.match(part)
        if not match:
            raise ConfigError(f"cannot parse codec stage {part.strip()!r} in {text!r}; "
                              "use name(key=value,...)")
        name, body = match.group(1).lower(), match.group(2) or ""
        stages.append((name, parse_params(body, name)))
    return stages


def format_stage(name: str, params: dict[str, Any]) -> str:
    if not params:
        return name
    return f"{name}({format_params(params)})"


def format_params(params: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return repr(v)
        return str(v)

    return ",".join(f"{k}={fmt(v)}" for k, v in params.items())
