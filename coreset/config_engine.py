"""YAML to frozen, typed dataclasses: the generic half of the config.

Field types drive everything: a value is coerced to its field's type hint (YAML 1.1 reads
``5e-4`` as a string, a bare ``12`` where a string is expected is a string), ``Literal``
fields accept only their listed values, unknown keys fail with the allowed ones. So the
allowed values of a setting are written once, in its type, and every message names the
dotted key a user would write in ``--set``.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

import yaml

from coreset.errors import ConfigError


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file (empty for an empty file)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p} must hold a mapping at top level, got {type(loaded).__name__}")
    return loaded


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``key.sub=value`` in ``raw``; the value is parsed as a YAML scalar or list."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, _, value = item.partition("=")
    parts = key.strip().split(".")
    node = raw
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
        node = nxt
    try:
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        node[parts[-1]] = value


def build(cls: type, raw: Any, prefix: str = "") -> Any:
    """An instance of dataclass ``cls`` from plain data, every field coerced to its type.

    A section class may define ``unknown_key_hint(key) -> str | None`` to say where a key
    that is not one of its fields belongs."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in raw:
        if key not in known:
            hint = getattr(cls, "unknown_key_hint", lambda k: None)(key)
            where = f"; {hint}" if hint else f"; allowed: {', '.join(sorted(known)) or 'none'}"
            raise ConfigError(f"unknown key {prefix}{key}{where}")
    return cls(**{k: coerce(f"{prefix}{k}", hints[k], v) for k, v in raw.items()})


def coerce(key: str, tp: Any, value: Any) -> Any:
    """``value`` as type ``tp`` (dataclasses, Literal, tuples, Optional, mappings, scalars)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value if value is not None else {}, prefix=key + ".")
    if tp is str and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # e.g. gradients.final_epoch: 12
    if origin is Literal:
        choice(key, value, typing.get_args(tp))
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            value = [value]
        (inner, *_rest) = typing.get_args(tp)
        return tuple(coerce(f"{key}[{i}]", inner, v) for i, v in enumerate(value))
    if origin in (dict, collections.abc.Mapping) or tp is dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return {str(k): v for k, v in value.items()}  # a registry-specific section checks the values
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = next(a for a in args if a is not type(None))
        return coerce(key, inner, value)
    return _scalar(key, tp, value)


def _scalar(key: str, tp: Any, value: Any) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"config field {key} has unsupported type {tp}")


def check_literals(obj: Any, prefix: str) -> None:
    """Every ``Literal`` field of dataclass ``obj`` holds one of its values (also for objects
    built in code, which skip :func:`coerce`)."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        tp = hints[f.name]
        if typing.get_origin(tp) is Literal:
            choice(f"{prefix}{f.name}", getattr(obj, f.name), typing.get_args(tp))


def allowed(tp: Any) -> tuple[Any, ...]:
    """The values a ``Literal`` type admits."""
    return typing.get_args(tp)


def to_plain(obj: Any) -> Any:
    """Dataclasses, tuples and mappings as plain dicts and lists (for YAML and JSON)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_plain(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def choice(key: str, value: Any, allowed_values: Sequence[Any]) -> None:
    if value not in allowed_values:
        raise ConfigError(f"{key}={value!r} is not allowed; allowed: {', '.join(map(str, allowed_values))}")


def at_least(key: str, value: float, lo: float) -> None:
    if value < lo:
        raise ConfigError(f"{key} must be >= {lo}, got {value}")


def in_range(key: str, value: float, lo: float, hi: float, lo_open: bool = True, hi_open: bool = False) -> None:
    bad = (value <= lo if lo_open else value < lo) or (value >= hi if hi_open else value > hi)
    if bad:
        lb, rb = ("(" if lo_open else "["), (")" if hi_open else "]")
        raise ConfigError(f"{key} must lie in {lb}{lo}, {hi}{rb}, got {value}")
