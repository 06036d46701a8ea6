"""argparse flags generated from a config model, so no flag table is copied by hand.

Each key becomes `--kebab-case` (a nested one `--laq.t-bar`), its description the help, a
bool `store_true` (`--x/--no-x` when it defaults to true), a Literal's values the metavar.
Values reach pydantic as typed (numbers converted when they parse), so a bad flag value
is the same one ConfigError line as a bad value in a file.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import AliasChoices, BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ..errors import ConfigError
from .base import section_model

METAVARS = {int: "N", float: "X", Path: "PATH", str: "TEXT", list: "A,B", dict: "YAML"}


@dataclass(frozen=True)
class Flag:
    """One config key as a command-line flag."""

    path: tuple[str, ...]
    info: FieldInfo

    @property
    def dest(self) -> str:
        return "config:" + ".".join(self.path)

    def options(self) -> list[str]:
        """`--name` and one option per old spelling (`--clock` for `t_bar`)."""
        names = [self.path[-1]]
        if isinstance(self.info.validation_alias, AliasChoices):
            names += [c for c in self.info.validation_alias.choices
                      if isinstance(c, str) and c not in names]
        head = "".join(p.replace("_", "-") + "." for p in self.path[:-1])
        return ["--" + head + n.replace("_", "-") for n in names]


def plain_type(annotation: Any) -> Any:
    """`int | None` -> int; a Literal, list or dict stays as it is."""
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        return rest[0] if len(rest) == 1 else str
    return annotation


def walk(model: type[BaseModel], exclude: Iterable[str] = (),
         prefix: tuple[str, ...] = ()) -> Iterator[Flag]:
    """Every leaf key of `model` (nested sections included), minus `exclude`."""
    for name, info in model.model_fields.items():
        if name in exclude:
            continue
        sub = section_model(model, name)
        if sub is not None:
            yield from walk(sub, (), prefix + (name,))
        else:
            yield Flag(prefix + (name,), info)


def owner(model: type[BaseModel], name: str) -> type:
    """The most basic class in the MRO that declares `name`: its section."""
    declaring = [c for c in model.__mro__ if name in getattr(c, "__annotations__", {})]
    return declaring[-1] if declaring else model


def help_text(info: FieldInfo) -> str:
    text = info.description or ""
    default = info.get_default(call_default_factory=True)
    hidden = default is None or default is False or default is PydanticUndefined
    if not hidden and default not in ({}, []) and not isinstance(default, BaseModel):
        text += f" (default {default})"
    return text.replace("%", "%%")


def add_config_flags(parser: argparse.ArgumentParser, model: type[BaseModel],
                     exclude: Iterable[str] = ()) -> list[Flag]:
    """One flag per key of `model`, in one argument group per section; `config_flags(args)`
    later returns the given ones as a (nested) mapping for the config builder."""
    order = {c: i for i, c in enumerate(model.__mro__)}
    flags = sorted(walk(model, exclude), key=lambda f: order[owner(model, f.path[0])])
    groups: dict[type, argparse._ArgumentGroup] = {}
    for flag in flags:
        section = owner(model, flag.path[0])
        if section not in groups:
            title = section.__name__.removesuffix("Section").removesuffix("Config").lower()
            doc = (section.__doc__ or "").strip().splitlines()
            groups[section] = parser.add_argument_group(title, doc[0] if doc else None)
        add_flag(groups[section], flag)
    parser.set_defaults(_config_flags=flags)
    return flags


def add_flag(group: argparse._ArgumentGroup, flag: Flag) -> None:
    kind = plain_type(flag.info.annotation)
    kwargs: dict[str, Any] = {"dest": flag.dest, "default": None, "help": help_text(flag.info)}
    if kind is bool:
        extra = flag.info.json_schema_extra
        on = flag.info.default is True or (isinstance(extra, dict) and extra.get("negatable"))
        kwargs["action"] = argparse.BooleanOptionalAction if on else "store_true"
    elif get_origin(kind) is Literal:
        kwargs["metavar"] = "{" + ",".join(str(a) for a in get_args(kind)) + "}"
    else:
        kwargs["metavar"] = METAVARS.get(get_origin(kind) or kind, "TEXT")
    group.add_argument(*flag.options(), **kwargs)


def config_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The config flags given on the command line, as `{key: value, section: {key: value}}`."""
    out: dict[str, Any] = {}
    for flag in getattr(args, "_config_flags", []):
        raw = getattr(args, flag.dest, None)
        if raw is None:
            continue
        node = out
        for part in flag.path[:-1]:
            node = node.setdefault(part, {})
        node[flag.path[-1]] = convert(raw, flag)
    return out


def convert(raw: Any, flag: Flag) -> Any:
    """A flag's string as the value its key expects; pydantic checks the result."""
    kind = plain_type(flag.info.annotation)
    kind = get_origin(kind) or kind
    if not isinstance(raw, str):
        return raw
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            return raw
    if kind is list:
        return [v.strip() for v in raw.strip("[]").split(",") if v.strip()]
    if kind is dict:
        try:
            value = yaml.safe_load(raw) if raw.strip() else {}
        except yaml.YAMLError:
            value = None
        if not isinstance(value, dict):
            raise ConfigError(f"{flag.options()[0]} {raw!r}: expected a mapping, e.g. "
                              "'{n_samples: 200}'")
        return value
    return raw


def add_command_flags(parser: argparse.ArgumentParser, model: type[BaseModel],
                      exclude: Iterable[str] = ()) -> list[Flag]:
    """A training command's flags: a config file, `--set`, `--json`, `--no-progress`, and one
    flag per key of `model`."""
    parser.add_argument("-c", "--config", type=Path, help="YAML/JSON config file (examples/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. communication.sync_interval=3")
    parser.add_argument("--json", action="store_true", help="print result rows as JSON lines")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return add_config_flags(parser, model, exclude)
