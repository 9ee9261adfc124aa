"""The time budget of ``hfstage auto``: what a unit of work (a recipe trained quickly or fully, a search, a bag of
folds) will cost, which unit may start with the time left, and the deadline stop.

Costs are seconds per training sample and epoch, per recipe: the portfolio's measurements on the development sets
are the prior, and every stage this run finishes replaces it with what this machine and this data measure. A
recipe not trained yet here is scaled by how the others measured against their priors (a slower machine is
slower for all of them). A unit starts only when its estimate, with a safety margin, fits the time left; a unit
still running at the deadline stops after its current stage (``DeadlineCallback``), and its last kept stage is
what it contributes.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from hfstage.callbacks import StageCallback
from hfstage.errors import HfstageError


@dataclass
class Unit:
    """A piece of work ``hfstage auto`` may start: ``recipe`` trained on ``samples`` training samples for the stages'
    ``epochs`` (``kind``: quick, full, search, bag ...), and what it is expected to buy per second."""

    name: str
    recipe: str
    kind: str
    epochs: Sequence[float]
    samples: int
    value_per_second: float = 0.0


@dataclass
class CostModel:
    """Seconds per sample-epoch by recipe (``prior``: the portfolio's measurements) and a fixed cost per stage
    (saving, evaluating), corrected by the stages this run has timed."""

    prior: dict[str, float]
    stage_overhead: float = 2.0  # seconds per stage before any is timed here
    _rates: dict[str, list[float]] = field(default_factory=dict)
    _overheads: list[float] = field(default_factory=list)

    def observe(self, recipe: str, samples: int, epochs: float, train_seconds: float, stage_seconds: float) -> None:
        """A finished stage: its training time (``train_seconds``) and its whole time, saving and evaluating
        included (``stage_seconds``)."""
        if samples > 0 and epochs > 0 and train_seconds > 0:
            self._rates.setdefault(recipe, []).append(train_seconds / (samples * epochs))
        self._overheads.append(max(0.0, stage_seconds - train_seconds))

    def rate(self, recipe: str) -> float:
        """Seconds per sample-epoch: measured here, else the prior scaled as the measured recipes were."""
        if self._rates.get(recipe):
            return statistics.median(self._rates[recipe])
        if recipe not in self.prior:
            raise KeyError(f"no cost known for recipe {recipe!r}")
        ratios = [statistics.median(rates) / self.prior[name] for name, rates in self._rates.items()
                  if rates and self.prior.get(name)]
        return self.prior[recipe] * (statistics.median(ratios) if ratios else 1.0)

    def estimate(self, unit: Unit) -> float:
        overhead = statistics.median(self._overheads) if self._overheads else self.stage_overhead
        return self.rate(unit.recipe) * unit.samples * sum(unit.epochs) + overhead * len(unit.epochs)


class Budget:
    """``seconds`` from when it is made; ``margin`` is the share an estimate is inflated by before it is trusted."""

    def __init__(self, seconds: float, margin: float = 0.1, clock: Callable[[], float] = time.monotonic):
        self.seconds, self.margin, self.clock = seconds, margin, clock
        self.started = clock()

    @property
    def deadline(self) -> float:
        return self.started + self.seconds

    def left(self) -> float:
        return max(0.0, self.deadline - self.clock())

    def fits(self, estimate: float) -> bool:
        return estimate * (1 + self.margin) <= self.left()


def next_unit(units: Sequence[Unit], cost: CostModel, budget: Budget) -> tuple[Unit | None, str]:
    """The unit to start now: the most valuable per second among those whose estimate fits the time left, with
    the reason (one line for the progress log); None when none fits."""
    fitting = [(u, cost.estimate(u)) for u in units if budget.fits(cost.estimate(u))]
    if not fitting:
        cheapest = min(units, key=cost.estimate, default=None)
        why = (f"nothing fits: the cheapest, {cheapest.name}, needs ~{cost.estimate(cheapest):.0f} s, "
               f"{budget.left():.0f} s left") if cheapest else "nothing left to do"
        return None, why
    unit, estimate = max(fitting, key=lambda pair: pair[0].value_per_second)
    return unit, f"training {unit.name} (est. {estimate / 60:.1f} min, {budget.left() / 60:.0f} min left)"


class OutOfTime(HfstageError):
    """The budget's deadline passed: the run stops before its next stage; its last kept stage stands."""


class DeadlineCallback(StageCallback):
    """Stops a run at the first stage boundary after ``deadline`` (a ``clock()`` value)."""

    def __init__(self, deadline: float, clock: Callable[[], float] = time.monotonic):
        self.deadline, self.clock = deadline, clock

    def on_stage_begin(self, stage_index: int, stage, run_config, **kwargs):
        if self.clock() >= self.deadline:
            raise OutOfTime(f"stage {stage_index} '{stage.name}' not started: the time budget ran out")
