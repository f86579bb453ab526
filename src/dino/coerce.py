"""Values from YAML files and command lines, converted to a field's declared type with a
one-line error that names the field (``ConfigError``)."""

from __future__ import annotations

import reprlib
import types
import typing
from typing import Any

from dino.errors import ConfigError


# Values in messages are shortened: a 400-byte YAML file of nested aliases holds a list
# whose full repr would not fit in memory.
def shown(value: Any) -> str:
    """``repr(value)``, shortened to a line."""
    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother = 2, 80, 80
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = 4
    return short.repr(value)


def coerce_to(name: str, tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return coerce_to(name, args[0], value)
    if origin is tuple:
        parts = typing.get_args(tp)
        if isinstance(value, str):
            value = value.replace(",", " ").split()
        if not isinstance(value, list | tuple) or len(value) != len(parts):
            raise ConfigError(f"{name}: expected {len(parts)} numbers, got {shown(value)}")
        return tuple(coerce_to(name, a, v) for a, v in zip(parts, value, strict=True))
    if tp is bool:
        return parse_bool(name, value)
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or _is_int_string(value)):
            raise ConfigError(f"{name}: expected an integer, got {shown(value)}")
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {shown(value)}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {shown(value)}") from None
    if tp is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{name}: expected a string, got {shown(value)}")
        return str(value)
    raise TypeError(f"unsupported field type {tp} for {name}")


def _is_int_string(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        int(value)
    except ValueError:
        return False
    return True


def parse_bool(name: str, value: Any) -> bool:
    """Accept the spellings of the reference ``bool_flag``: true/false, 1/0, on/off, yes/no."""
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("1", "true", "on", "yes"):
        return True
    if text in ("0", "false", "off", "no"):
        return False
    raise ConfigError(f"{name}: expected true or false, got {shown(value)}")
