"""The config machinery every runtime shares: a strict pydantic base that knows each key's
old spellings, YAML/JSON files, `--set key=value`, and file < flags < `--set` precedence.
Every mistake becomes one ConfigError line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import (AliasChoices, BaseModel, ConfigDict, ValidationError,
                      model_validator)

from ..errors import ConfigError

M = TypeVar("M", bound=BaseModel)
# a bool key's `json_schema_extra` when a runtime may choose it for the user: its flag gets a
# `--no-` form, so an explicit false can win over the chosen true
NEGATABLE = {"negatable": True}


class Strict(BaseModel):
    """Unknown keys are errors; an alias (`validation_alias=AliasChoices(name, old, ...)`)
    is renamed to the key's one name before validation, so errors and dumps use that name."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _one_name_per_key(cls, data: Any) -> Any:
        return canonical(cls, data) if isinstance(data, Mapping) else data


def aliases(model: type[BaseModel]) -> dict[str, str]:
    """{old spelling: field name} for the fields of `model` (not nested sections)."""
    out: dict[str, str] = {}
    for name, info in model.model_fields.items():
        choices = info.validation_alias
        if isinstance(choices, AliasChoices):
            out.update({c: name for c in choices.choices if isinstance(c, str) and c != name})
    return out


def canonical(model: type[BaseModel], data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` with every alias renamed to its field's name; both spellings at once is an error."""
    renames = aliases(model)
    out = dict(data)
    for old, new in renames.items():
        if old in out:
            if new in out and out[new] != out[old]:
                raise ConfigError(f"'{old}' and '{new}' are one key ({old} is its old "
                                  f"spelling) with two values; give one")
            out[new] = out.pop(old)
    return out


def section_model(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    """The nested model a key holds (`communication`, `laq`), if it holds one."""
    info = model.model_fields.get(key)
    ann = info.annotation if info else None
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def load_file(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config {path} is not valid YAML/JSON: {exc}".replace("\n", " "))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of keys to values")
    return data


def apply_set(data: dict[str, Any], assignment: str,
              model: type[BaseModel] | None = None) -> None:
    """`--set communication.sync_interval=3` (values parsed as YAML scalars). With `model`,
    each part of the key is renamed from an old spelling first (`mode` -> `preset`)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.strip().split(".")
    for i, part in enumerate(parts):
        if model is not None:
            part = aliases(model).get(part, part)
        if i == len(parts) - 1:
            node[part] = value
            return
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
        model = section_model(model, part) if model is not None else None


def build(model: type[M], file: Path | str | None = None,
          flags: Mapping[str, Any] | None = None, sets: Iterable[str] | None = None,
          label: str = "config") -> M:
    """File < flags < `--set`, each layer's old spellings renamed first so a later layer
    wins whichever spelling either used; one ConfigError line on any problem."""
    data = canonical_tree(model, load_file(Path(file))) if file else {}
    merge(data, canonical_tree(model, {k: v for k, v in (flags or {}).items()
                                       if v is not None}))
    for assignment in sets or []:
        apply_set(data, assignment, model)
    return validate(model, data, label)


def merge(data: dict[str, Any], over: Mapping[str, Any]) -> None:
    """`over` into `data`; a section given in both keeps the keys `over` does not set."""
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(data.get(key), dict):
            merge(data[key], value)
        else:
            data[key] = value


def canonical_tree(model: type[BaseModel] | None, data: dict[str, Any]) -> dict[str, Any]:
    """`canonical` applied to a mapping and to every nested section in it."""
    if model is None:
        return data
    out = canonical(model, data)
    for key, value in out.items():
        if isinstance(value, dict):
            out[key] = canonical_tree(section_model(model, key), value)
    return out


def validate(model: type[M], data: Mapping[str, Any], label: str = "config") -> M:
    try:
        return model(**data)
    except ValidationError as exc:
        raise ConfigError(describe(exc, model, label)) from None


def describe(exc: ValidationError, model: type[BaseModel] | None = None,
             label: str = "config") -> str:
    """One line for all of a validation's problems; a renamed key also shows its old name."""
    old = {new: o for o, new in all_aliases(model).items()} if model else {}
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "config"
        last = str(err["loc"][-1]) if err["loc"] else ""
        if last in old:
            key += f" (old name {old[last]})"
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'")
        elif err["type"] == "value_error" and "ctx" in err:
            problems.append(str(err["ctx"].get("error", err["msg"])))
        else:
            problems.append(f"{key}={err.get('input')!r}: {err['msg']}")
    return f"bad {label}: " + "; ".join(problems)


def all_aliases(model: type[BaseModel]) -> dict[str, str]:
    """`aliases` of a model and of the sections nested in it."""
    out = aliases(model)
    for key in model.model_fields:
        sub = section_model(model, key)
        if sub is not None:
            out.update(all_aliases(sub))
    return out
