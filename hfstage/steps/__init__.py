"""Stage steps, one module each behind ``STEPS`` (``steps/base.py``); registration order is firing order."""

from __future__ import annotations

from hfstage.steps import (  # noqa: F401  (registers the steps, in the order they act)
    pseudo_labels,
    train_on_eval,
    match_target,
    adabn,
    auto_values,
    surgery,
    teacher,
    early_stopping,
    tuned_decision,
)
from hfstage.steps.base import STEPS, StageContext, StageStep, fire, steps_for

__all__ = ["STEPS", "StageContext", "StageStep", "fire", "steps_for"]
