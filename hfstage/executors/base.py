"""The executor interface: where the independent units of a job train (the folds of ``folds: N``, the seeds of
``seeds: [...]``, the bases of a stacking recipe), each a complete run folder of its own.

An executor is a class registered in ``EXECUTORS``, configured by the mapping ``executor: {type: NAME, ...}``
whose other keys are checked against its constructor (as a loss's are). ``run(units)`` trains every unit and
returns when all are done, or raises one ``StageError`` naming each unit that failed; what joins the units
(out-of-fold files, seed tables, the meta-learner) runs in the calling process afterwards. An executor that
``fans_out`` trains units elsewhere (other processes or machines), so stage callbacks cannot follow them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hfstage.arguments import check_arguments, defaults_of
from hfstage.errors import ConfigError
from hfstage.registry import Registry

EXECUTORS: Registry = Registry("executor", "hfstage.executors")


@dataclass
class Unit:
    """One independent training: a complete run folder of its own."""

    name: str  # fold_1, seed_3, seed_3/fold_0, or a stack base's name
    cfg: Any  # its RunConfig
    config_file: str | None = None
    callbacks: tuple = ()  # stage callbacks that travel with the unit (picklable; they report to shared storage,
    #                        such as a search trial's pruning, not to this process)


class Executor:
    """Base of every executor; subclasses set ``name`` and implement ``run``."""

    name: str = ""
    fans_out: bool = False  # trains units side by side elsewhere (a single run has nothing to fan out)
    checks: dict[str, tuple] = {}  # constructor argument -> (predicate, "must be ...")

    def run(self, units: list[Unit], callbacks=()) -> None:
        """Train every unit; raise ``StageError`` naming each unit that failed (finished ones are kept)."""
        raise NotImplementedError(f"{type(self).__name__}.run")

    def describe(self) -> str:
        """One line for ``hfstage plan``."""
        return f"executor {self.name}"

    def slots(self) -> int:
        """How many units it trains side by side (what a search starts at once)."""
        return 1


LOCAL = {"type": "local"}


def executor_spec(value: Any, where: str) -> dict[str, Any]:
    """``executor: NAME`` or ``{type: NAME, ...}`` -> the mapping with the executor's defaults filled in, its keys
    checked against the executor's constructor."""
    if isinstance(value, str):
        raise ConfigError(f"{where}: the executor is a mapping: executor: {{type: {value}}} (its other keys are the "
                          f"executor's settings)")
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping with 'type' (one of {', '.join(EXECUTORS.names())}), "
                          f"got {value!r}")
    if not isinstance(value.get("type"), str):
        raise ConfigError(f"{where}.type: missing; name the executor ({', '.join(EXECUTORS.names())}) that takes "
                          f"{', '.join(k for k in value if k != 'type') or 'these settings'}")
    cls = EXECUTORS.get(value["type"], f"{where}.type")
    args = check_arguments(cls, {k: v for k, v in value.items() if k != "type"}, where, f"executor '{value['type']}'",
                           checks=cls.checks)
    try:
        cls(**args)  # what only the constructor can judge (constructors have no side effects)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc}") from None
    return {"type": value["type"], **defaults_of(cls), **args}


def build_executor(spec: dict[str, Any] | None) -> Executor:
    spec = dict(spec or LOCAL)
    return EXECUTORS.get(spec.pop("type"), "executor.type")(**spec)


def fans_out(spec: dict[str, Any] | None) -> bool:
    return EXECUTORS.get((spec or LOCAL)["type"], "executor.type").fans_out
