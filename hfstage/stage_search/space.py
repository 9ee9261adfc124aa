"""Search spaces: ``KEY=DIST`` as ``hfstage search --space`` and a recipe's ``search.space`` write them.

``DIST`` is one of ``loguniform(LOW,HIGH)`` (0 < LOW < HIGH), ``uniform(LOW,HIGH)`` (LOW < HIGH), ``int(LOW,HIGH)``
(integers, LOW <= HIGH, both ends included) and ``choice(A,B,...)`` (YAML values: numbers, strings, booleans).
``KEY`` is a stage field as an override writes it under the searched stage (``lr``, ``loss.gamma``,
``augmentation.rotate``, ``training_args.warmup_steps``), or ``model.FIELD`` when the searched stage is the first.
Parsing needs no Optuna; ``Dist.suggest`` asks an Optuna trial for a value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

import yaml

from hfstage.arguments import closest
from hfstage.errors import ConfigError

KINDS = ("loguniform", "uniform", "int", "choice")
_DIST = re.compile(r"^\s*([A-Za-z_]+)\s*\((.*)\)\s*$", re.S)


@dataclass(frozen=True)
class Dist:
    """One parameter's distribution: ``kind`` and its ``values`` (LOW, HIGH, or the choices)."""

    kind: str
    values: tuple

    @property
    def text(self) -> str:
        return f"{self.kind}({','.join(_show(v) for v in self.values)})"

    def probes(self) -> tuple:
        """The values a recipe must accept for this distribution to be searchable: both ends, or every choice."""
        return self.values

    def suggest(self, trial, key: str) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(key, list(self.values))
        if self.kind == "int":
            return trial.suggest_int(key, *self.values)
        return trial.suggest_float(key, *self.values, log=self.kind == "loguniform")


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _number(text: str, where: str, kind: str) -> float:
    text = text.strip()
    for cast in (int, float):
        try:
            value = cast(text)
        except ValueError:
            continue
        if math.isfinite(value):
            return value
    raise ConfigError(f"{where}: {kind}() takes numbers, got {text!r}")


def _value(text: str) -> Any:
    """A choice: a number (``1e-5`` included, which YAML 1.1 reads as text), else a YAML scalar."""
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return text


def parse_dist(text: str, where: str) -> Dist:
    """``loguniform(1e-5,1e-2)`` -> ``Dist``; a bad name, a wrong argument count or an empty range raises."""
    match = _DIST.match(str(text))
    if not match:
        raise ConfigError(f"{where}: {text!r} is not a distribution; write one of loguniform(LOW,HIGH), "
                          "uniform(LOW,HIGH), int(LOW,HIGH), choice(A,B,...)")
    kind, inner = match.group(1), match.group(2)
    if kind not in KINDS:
        raise ConfigError(f"{where}: unknown distribution {kind!r}{closest(kind, KINDS)}; choose one of {', '.join(KINDS)}")
    parts = [p for p in inner.split(",")] if inner.strip() else []
    if kind == "choice":
        if not parts:
            raise ConfigError(f"{where}: choice() is empty; give at least one value")
        values = []
        for p in parts:
            value = _value(p)
            if value is None or isinstance(value, (list, dict)):
                raise ConfigError(f"{where}: choice() values are numbers, strings or booleans, got {p.strip()!r}")
            values.append(value)
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{where}: choice() names a value twice")
        return Dist(kind, tuple(values))
    if len(parts) != 2:
        raise ConfigError(f"{where}: {kind}() takes two numbers, LOW and HIGH; got {len(parts)}")
    low, high = (_number(p, where, kind) for p in parts)
    if kind == "int":
        if low != int(low) or high != int(high):
            raise ConfigError(f"{where}: int() takes integers, got {_show(low)} and {_show(high)}")
        low, high = int(low), int(high)
        if low > high:
            raise ConfigError(f"{where}: int({low},{high}) is an empty range (LOW must be <= HIGH)")
        return Dist(kind, (low, high))
    low, high = float(low), float(high)
    if low >= high:
        raise ConfigError(f"{where}: {kind}({_show(low)},{_show(high)}) is an empty range (LOW must be < HIGH)")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform() needs 0 < LOW, got {_show(low)}")
    return Dist(kind, (low, high))


def parse_space(items: Iterable[str] | dict[str, Any], where: str = "--space") -> dict[str, Dist]:
    """``["lr=loguniform(1e-5,1e-2)", ...]`` or ``{"lr": "loguniform(1e-5,1e-2)"}`` -> ``{key: Dist}``."""
    pairs: list[tuple[str, Any]] = []
    if isinstance(items, dict):
        pairs = list(items.items())
    else:
        for item in items:
            key, sep, dist = str(item).partition("=")
            if not sep:
                raise ConfigError(f"{where} {item!r}: expected KEY=DIST, e.g. lr=loguniform(1e-5,1e-2)")
            pairs.append((key, dist))
    space: dict[str, Dist] = {}
    for key, dist in pairs:
        key = str(key).strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{where} {key}={dist}: empty key")
        if key in space:
            raise ConfigError(f"{where} {key}: given twice")
        space[key] = parse_dist(str(dist), f"{where} {key}")
    return space


def space_texts(space: dict[str, Dist]) -> dict[str, str]:
    return {key: dist.text for key, dist in space.items()}
