"""``kind: adabn``: no gradient steps; the BatchNorm statistics are re-estimated on the unlabelled target images."""

from __future__ import annotations

from hfstage.steps.base import STEPS, StageContext, StageStep


@STEPS.register("adabn")
class AdaBN(StageStep):
    @staticmethod
    def applies(stage) -> bool:
        return stage.kind == "adabn"

    def on_data(self, ctx: StageContext) -> None:
        from hfstage.adapt import target_images

        adapt_set = target_images(ctx.cfg, ctx.task)
        ctx.trainer_args["adapt_dataset"] = adapt_set
        ctx.description = (f"BatchNorm statistics re-estimated on {len(adapt_set)} images of "
                           f"{ctx.cfg.data.unlabeled_file} (no gradient steps)")

    def on_record(self, ctx: StageContext, trainer, record) -> None:
        record.train_samples_per_second = None
        record.extra["adabn"] = trainer.adapted
