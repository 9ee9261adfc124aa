"""Stage steps: each stage feature (pseudo-labels, a refit on train + eval, matched augmentation, AdaBN, ``auto``
values, surgery, a teacher, early stopping, tuned decisions) is a small class acting on named events of one stage
(in the spirit of Composer's algorithms and the Trainer's callbacks), chosen by the stage's own fields.
``hfstage.stage.train_stage`` only fires the events, in this order:

- ``on_data``: the model to start from is built or loaded; the step decides what the stage trains on
  (``ctx.train_set``), with what (``ctx.collator_args``, ``ctx.trainer_args``) and resolves values (``ctx.trained``);
- ``on_model``: the model as this stage trains it (dropout, frozen parameters, a teacher);
- ``on_callbacks``: the stage's Trainer callbacks (``ctx.callbacks``);
- ``after_evaluation``: the eval metrics of the stage's best checkpoint are known (``trainer``, ``metrics``);
- ``on_record``: the stage's ``stage.json`` record is built (``record``), before the stage is published.

Every event has a no-op default here, so the loop never asks whether a step has it. A new stage feature is one
module in ``hfstage/steps/`` (a ``StageStep`` registered with ``@STEPS.register(name)``) plus its config field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hfstage.registry import Registry

STEPS: Registry = Registry("stage step", "hfstage.steps")


@dataclass
class StageContext:
    """What the events of one stage share."""

    cfg: Any  # RunConfig
    task: Any
    splits: Any
    index: int
    stage: Any  # StageConfig, as written
    records: list
    folder: Any  # RunDir
    where: str  # "stages.N (name)", for messages
    model: Any = None
    start: Any = None  # the StageRecord this stage starts from, or None (random init)
    train_set: Any = None
    trained: Any = None  # the StageConfig as it trains (``auto`` values resolved)
    collator_args: dict = field(default_factory=dict)  # extra arguments of the training collator
    trainer_args: dict = field(default_factory=dict)  # extra arguments of StageTrainer
    callbacks: list = field(default_factory=list)
    resolved: dict = field(default_factory=dict)  # values decided while the stage runs (stage.json "resolved")
    extra: dict = field(default_factory=dict)  # other stage.json entries the steps add
    frozen: int = 0  # parameters frozen (surgery)
    pseudo_labels: dict | None = None  # stage.json "pseudo_labels"
    description: str = ""  # what the stage does instead of gradient steps, for the log (estimators, AdaBN)
    log_suffix: str = ""  # appended to the stage's start line


class StageStep:
    """A stage feature; ``applies`` chooses it from the stage's fields (by default: the stage field ``field`` is
    set), the events act (all no-ops here)."""

    field: str | None = None  # the StageConfig field that turns the step on

    @classmethod
    def applies(cls, stage) -> bool:
        return bool(getattr(stage, cls.field)) if cls.field else False

    def on_data(self, ctx: StageContext) -> None:
        """Decide what the stage trains on."""

    def on_model(self, ctx: StageContext) -> None:
        """Shape the model as this stage trains it."""

    def on_callbacks(self, ctx: StageContext) -> None:
        """Add Trainer callbacks."""

    def after_evaluation(self, ctx: StageContext, trainer, metrics: dict) -> None:
        """Act on the eval metrics of the stage's best checkpoint (before the test split is evaluated)."""

    def on_record(self, ctx: StageContext, trainer, record) -> None:
        """Add to the stage's record (stage.json)."""


def steps_for(stage) -> list[StageStep]:
    """The steps a stage's fields ask for, in registration order."""
    return [STEPS.get(name)() for name in STEPS.registered() if STEPS.get(name).applies(stage)]


def fire(steps: list[StageStep], event: str, ctx: StageContext, *args) -> None:
    for step in steps:
        getattr(step, event)(ctx, *args)
