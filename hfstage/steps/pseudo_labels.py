"""``pseudo_labels: true``: the unlabelled images the stage's starting model labels confidently join its data."""

from __future__ import annotations

from hfstage.steps.base import STEPS, StageContext, StageStep


@STEPS.register("pseudo_labels")
class PseudoLabels(StageStep):
    field = "pseudo_labels"

    def on_data(self, ctx: StageContext) -> None:
        from hfstage.pseudo import add_pseudo_labels

        # labelled by the model this stage starts from, before it changes
        ctx.train_set, ctx.pseudo_labels = add_pseudo_labels(ctx.cfg, ctx.task, ctx.stage, ctx.model, ctx.train_set)
