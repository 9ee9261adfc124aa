"""The task's decision settings chosen on the eval split when the stage ends (speech: the error flags' threshold,
its best F1): saved in the model's config, used for the test split, by ``evaluate`` and by the pipeline. A
``train_on_eval`` stage keeps the one its start stage chose held out (its eval split is in-sample)."""

from __future__ import annotations

import functools

from hfstage.steps.base import STEPS, StageContext, StageStep


@STEPS.register("tuned_decision")
class TunedDecision(StageStep):
    @staticmethod
    def applies(stage) -> bool:
        return True

    def after_evaluation(self, ctx: StageContext, trainer, metrics: dict) -> None:
        decision = ctx.task.tuned_decision(metrics)
        if not decision:
            return
        config = trainer.accelerator.unwrap_model(trainer.model).config
        if ctx.stage.train_on_eval and ctx.start is not None:
            decision = {key: getattr(config, key, value) for key, value in decision.items()}
        trainer.compute_metrics = functools.partial(ctx.task.compute_metrics, **decision)  # the test split uses it
        config.update(decision)
        ctx.resolved.update(decision)
