"""``train_on_eval: true``: a last refit on train + eval, once earlier stages chose on eval; its eval metrics are
in-sample from here on, so stacking refuses its predictions of the eval split (recorded in stage.json)."""

from __future__ import annotations

from hfstage.steps.base import STEPS, StageContext, StageStep


@STEPS.register("train_on_eval")
class TrainOnEval(StageStep):
    field = "train_on_eval"

    def on_data(self, ctx: StageContext) -> None:
        from hfstage.folds import JoinedSplits

        ctx.train_set = JoinedSplits(ctx.train_set, ctx.splits.eval)
        ctx.trainer_args["eval_in_training"] = True
        ctx.log_suffix = f", on train + eval ({len(ctx.train_set)} samples; eval metrics in-sample)"

    def on_record(self, ctx: StageContext, trainer, record) -> None:
        given = ctx.splits.eval_sha256
        sha = given or ctx.task.data_fingerprint(ctx.cfg.data, "eval_file")
        record.extra["trained_on_eval"] = {"eval_data_sha256": sha, "train_samples": len(ctx.train_set)}
