"""``early_stopping_patience``: the stage stops after that many evaluations without improvement."""

from __future__ import annotations

from hfstage.steps.base import STEPS, StageContext, StageStep


@STEPS.register("early_stopping")
class EarlyStopping(StageStep):
    field = "early_stopping_patience"

    def on_callbacks(self, ctx: StageContext) -> None:
        from transformers import EarlyStoppingCallback

        ctx.callbacks.append(EarlyStoppingCallback(early_stopping_patience=ctx.stage.early_stopping_patience))
