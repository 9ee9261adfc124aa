"""Callbacks: stage events for the curriculum, and the run's text log.

A :class:`StageCallback` is a ``TrainerCallback`` that also hears ``on_stage_begin`` and
``on_stage_end`` from the curriculum runner, with the stage's config, so augmentation, data or
anything else can change from stage to stage.
"""

from __future__ import annotations

import logging
import math

from transformers import TrainerCallback

logger = logging.getLogger("hfstage")


class StageCallback(TrainerCallback):
    """Base class for callbacks that react to curriculum stages as well as Trainer events."""

    def on_stage_begin(self, stage_index: int, stage, run_config, **kwargs):
        """Called before a stage's trainer is built. ``stage`` is its StageConfig (may be changed)."""

    def on_stage_end(self, stage_index: int, stage, run_config, record: dict, **kwargs):
        """Called after a stage's files are written. ``record`` is its ``run_dir.StageRecord`` (what its
        stage.json holds)."""


class TrainingLogCallback(StageCallback):
    """Writes every Trainer log line (loss, lr, eval metrics) to the hfstage logger, i.e. ``training.log``."""

    def __init__(self, stage_label: str):
        self.stage_label = stage_label

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        shown = ", ".join(
            f"{k}={v:.6g}" if isinstance(v, float) and math.isfinite(v) else f"{k}={v}" for k, v in logs.items()
        )
        logger.info("%s step %d/%d: %s", self.stage_label, state.global_step, state.max_steps, shown)
