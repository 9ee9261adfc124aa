"""``augmentation.match_target``: training images degraded toward the unlabelled target images' brightness,
contrast, blur and noise (fitted when the stage starts, recorded in stage.json)."""

from __future__ import annotations

from hfstage.steps.base import STEPS, StageContext, StageStep


@STEPS.register("match_target")
class MatchTarget(StageStep):
    @staticmethod
    def applies(stage) -> bool:
        return bool(stage.augmentation.get("match_target"))

    def on_data(self, ctx: StageContext) -> None:
        from hfstage.adapt import fit_target_match

        ctx.collator_args["target_match"], ctx.extra["match_target"] = fit_target_match(ctx.cfg, ctx.task, ctx.stage,
                                                                                         ctx.splits.train)
