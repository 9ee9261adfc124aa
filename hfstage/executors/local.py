"""``executor: {type: local}`` (the default): every unit in turn, in this process (and, under ``accelerate launch``,
in every process of the launch together, as a single run trains)."""

from __future__ import annotations

from hfstage.executors.base import EXECUTORS, Executor, Unit


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """One unit after another here, each resumed where it stopped (its stages table printed as it ends); the first
    unit that fails stops the job, as one run's failure does."""

    name = "local"

    def run(self, units: list[Unit], callbacks=()) -> None:
        from hfstage.curriculum import run

        for unit in units:
            run(unit.cfg, unit.config_file, [*callbacks, *unit.callbacks])

    def describe(self) -> str:
        return "executor local: the units one after another in this process"
