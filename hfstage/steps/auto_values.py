"""``auto`` values worked out from the data the stage trains on: ``loss.pos_weight: auto`` is the ratio of correct to
mispronounced phonemes (recorded in stage.json's ``resolved``)."""

from __future__ import annotations

import dataclasses
import logging

from hfstage.errors import ConfigError
from hfstage.steps.base import STEPS, StageContext, StageStep

logger = logging.getLogger("hfstage")


@STEPS.register("auto_values")
class AutoValues(StageStep):
    @staticmethod
    def applies(stage) -> bool:
        return stage.loss.get("pos_weight") == "auto"

    def on_data(self, ctx: StageContext) -> None:
        rate = ctx.task.error_rate(ctx.train_set)
        if rate is None:
            raise ConfigError(f"{ctx.where}.loss.pos_weight: auto needs a task with per-phoneme error labels (speech)")
        if not 0 < rate < 1:
            raise ConfigError(f"{ctx.where}.loss.pos_weight: auto needs correct and mispronounced phonemes in the "
                              f"training split (its error rate is {rate:g}); give a number")
        value = round((1 - rate) / rate, 4)
        logger.info("stage '%s': loss.pos_weight auto = %g (training error rate %.4f)", ctx.stage.name, value, rate)
        ctx.trained = dataclasses.replace(ctx.trained, loss={**ctx.trained.loss, "pos_weight": value})
        ctx.resolved["loss.pos_weight"] = value
