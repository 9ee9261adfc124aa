"""``teacher``: a saved stage whose outputs the stage's loss distils (``losses/distillation.py``)."""

from __future__ import annotations

from hfstage.steps.base import STEPS, StageContext, StageStep


@STEPS.register("teacher")
class Teacher(StageStep):
    field = "teacher"

    def on_model(self, ctx: StageContext) -> None:
        from hfstage.resolve import resolve_checkpoint

        ctx.trainer_args["teacher_model"] = resolve_checkpoint(ctx.stage.teacher["checkpoint"]).load_model()
