"""The model as the stage trains it: its ``dropout``, ``freeze_patterns`` and ``freeze_batchnorm`` (every stage)."""

from __future__ import annotations

from hfstage.steps.base import STEPS, StageContext, StageStep


@STEPS.register("surgery")
class Surgery(StageStep):
    @staticmethod
    def applies(stage) -> bool:
        return True

    def on_model(self, ctx: StageContext) -> None:
        from hfstage.surgery import freeze, keep_batchnorm_statistics, set_dropout

        set_dropout(ctx.model, ctx.stage.dropout)
        ctx.frozen = freeze(ctx.model, ctx.stage.freeze_patterns, ctx.where)
        if ctx.stage.freeze_batchnorm:
            keep_batchnorm_statistics(ctx.model)
