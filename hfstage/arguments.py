"""Values from YAML, checked: type coercion by annotation, and mappings checked against a constructor.

Config dataclasses (``config.py``) and every pluggable part configured by a mapping (models, losses)
go through these two functions, so a wrong key or value gets the same kind of message everywhere:
the file or field, the key, and the nearest valid key.
"""

from __future__ import annotations

import inspect
import math
import typing
from typing import Any, Callable, Union

from hfstage.errors import ConfigError

# ``(predicate, "must be ...")`` checks shared by config fields and constructor arguments
POSITIVE = (lambda v: v > 0, "must be > 0")
NON_NEGATIVE = (lambda v: v >= 0, "must be >= 0")
FRACTION = (lambda v: 0 <= v < 1, "must be in [0, 1)")
AT_LEAST_ONE = (lambda v: v >= 1, "must be >= 1")


def closest(name: str, choices) -> str:
    """Return ' (did you mean 'x'?)' for the nearest valid choice, or '' when nothing is close."""
    import difflib

    choices = [str(c) for c in choices]
    match = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.5)
    if not match and len(str(name)) >= 3:  # a prefix or a part: 'pairs' -> 'pair_classification'
        stem = str(name).rstrip("s").lower()
        match = [c for c in choices if stem in c.lower()][:1]
    return f" (did you mean '{match[0]}'?)" if match else ""


def type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; convert strings where YAML left numbers unparsed.

    PyYAML reads ``1e-4`` as a string (YAML 1.1 wants a dot), so numeric fields accept numeric strings.
    """
    origin = typing.get_origin(tp)
    if origin is Union or type(tp).__name__ == "UnionType":
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        for option in args[:-1]:  # the first member the value fits (``float | str``: 2.0 or "auto")
            try:
                return coerce(value, option, where)
            except ConfigError:
                continue
        return coerce(value, args[-1], where)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        else:
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(out):
            raise ConfigError(f"{where}: {out} is not allowed (a finite number is needed)")
        return out
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and item_tp is str:
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [coerce(v, item_tp, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {coerce(k, key_tp, where): coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"unsupported config type {tp}")  # a bug in hfstage, not user input


def accepted_arguments(target: Callable, exclude: tuple[str, ...] = ()) -> dict[str, inspect.Parameter]:
    """The keyword arguments ``target`` (a class or function) takes, minus ``exclude``."""
    fn = target.__init__ if inspect.isclass(target) else target
    return {name: p for name, p in inspect.signature(fn).parameters.items()
            if name not in ("self", *exclude) and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def check_arguments(target: Callable, given: dict[str, Any], where: str, what: str, exclude: tuple[str, ...] = (),
                    checks: dict[str, tuple] | None = None, typed: bool = True) -> dict[str, Any]:
    """``given`` checked against ``target``'s constructor: every key must be one of its arguments (an unknown one
    gets the closest name and the list of valid ones); with ``typed`` each value is coerced to the argument's
    annotation and ``checks`` (argument -> ``(predicate, "must be ...")``) are applied. Returns the coerced mapping.
    """
    accepted = accepted_arguments(target, exclude)
    hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target) if typed else {}
    out = {}
    for key, value in given.items():
        if key not in accepted:
            valid = f"it takes: {', '.join(accepted)}" if accepted else "it takes no arguments"
            raise ConfigError(f"{where}.{key}: unknown argument of {what}{closest(key, accepted)}; {valid}")
        if typed and key in hints:
            value = coerce(value, hints[key], f"{where}.{key}")
        check = (checks or {}).get(key)
        if check is not None and value is not None and not check[0](value):
            raise ConfigError(f"{where}.{key}: {value!r} {check[1]}")
        out[key] = value
    return out


def defaults_of(target: Callable, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every argument of ``target`` that has a default, with that default."""
    return {name: p.default for name, p in accepted_arguments(target, exclude).items() if p.default is not p.empty}
