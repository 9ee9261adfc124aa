"""One stage: ``train_stage`` fires the events of the stage's steps (``hfstage.steps``) around one fresh
``StageTrainer`` run, then publishes the stage folder. What each stage feature does lives in its step; the helpers
here build the trainer, the log line and the record, and publish.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from transformers import set_seed

from hfstage.callbacks import StageCallback, TrainingLogCallback
from hfstage.cards import stage_card
from hfstage.config import RunConfig, StageConfig, init_stage_index
from hfstage.errors import StageError, first_line
from hfstage.models import build_model, save_stage_model
from hfstage.models.base import is_native
from hfstage.resolve import load_stage_model
from hfstage.run_dir import RunDir, StageRecord, decide_kept, last_complete_checkpoint, latest_kept, stage_dirname
from hfstage.steps import StageContext, fire, steps_for
from hfstage.surgery import with_encoder_lr
from hfstage.tracking import TRAINER_SUMMARY_KEYS, CurriculumTracking
from hfstage.trainer import StageTrainer, StageTrainingArguments

logger = logging.getLogger("hfstage")


def train_stage(cfg: RunConfig, task, splits, index: int, stage: StageConfig, records: list[StageRecord],
                folder: RunDir, callbacks: Sequence[StageCallback], state, train_sha256: str,
                tracking: CurriculumTracking | None = None) -> StageRecord:
    """Train one stage and publish its folder; returns its stage.json record."""
    label = stage_dirname(index, stage.name)
    for cb in callbacks:
        if hasattr(cb, "on_stage_begin"):  # plain TrainerCallbacks are welcome too
            cb.on_stage_begin(stage_index=index, stage=stage, run_config=cfg)
    ctx = StageContext(cfg, task, splits, index, stage, records, folder, f"stages.{index} ({stage.name})",
                       train_set=splits.train, trained=stage)
    steps = steps_for(stage)
    ctx.model, ctx.start = _starting_model(ctx)
    fire(steps, "on_data", ctx)
    fire(steps, "on_model", ctx)
    work = folder.work_dir(label, stage, main=state.is_main_process)
    state.wait_for_everyone()
    ctx.callbacks = [TrainingLogCallback(label), *callbacks]
    fire(steps, "on_callbacks", ctx)
    if tracking is not None:  # one timeline: this stage's steps follow the earlier stages'
        tracking.begin_stage(index, stage, sum(r.global_steps or 0 for r in records))
        ctx.callbacks.append(tracking)
    trainer = _trainer(ctx, work)
    resume = last_complete_checkpoint(work)
    _log_start(ctx, resume)
    began = time.time()
    try:
        trainer.train(resume_from_checkpoint=resume)
    except OSError as exc:  # a checkpoint could not be written (disk full, read-only folder)
        raise StageError(f"stage {index} '{stage.name}': could not write its checkpoint under {work} "
                         f"({exc.strerror or exc}); earlier stages are intact: free space or fix the folder's "
                         "permissions, then rerun the same command to resume") from None
    training_time = time.time() - began
    metrics = best_checkpoint_metrics(trainer) or trainer.evaluate()
    fire(steps, "after_evaluation", ctx, trainer, metrics)
    tested = splits.test is not None and ctx.cfg.test_every_stage
    test_metrics = trainer.evaluate(splits.test, metric_key_prefix="test") if tested else {}
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise StageError(f"stage {index} '{stage.name}': {key} is {value}; the stage's files were not written")
    record = _record(ctx, trainer, metrics, test_metrics, training_time, train_sha256, state.num_processes)
    fire(steps, "on_record", ctx, trainer, record)
    if state.is_main_process:
        _publish(ctx, trainer, record, work)
    state.wait_for_everyone()
    _log_kept(ctx, record, metrics)
    if tracking is not None:
        tracking.end_stage(record)
    for cb in callbacks:
        if hasattr(cb, "on_stage_end"):
            cb.on_stage_end(stage_index=index, stage=stage, run_config=cfg, record=record)
    return record


def _starting_model(ctx: StageContext):
    """(the model the stage starts from, the record of the stage it comes from or None): the latest kept stage's
    (or ``init_from``'s), else a fresh one from the recipe."""
    chosen = init_stage_index(ctx.cfg.stages, ctx.stage)
    start = ctx.records[chosen - 1] if chosen else latest_kept(ctx.records)
    if start is None:
        set_seed(ctx.cfg.seed)
        return build_model(ctx.cfg.model, load_weights=True, **ctx.task.model_args(ctx.splits)), None
    return load_stage_model(ctx.folder.stage_path(start)), start


def _trainer(ctx: StageContext, work: Path) -> StageTrainer:
    stage, model = ctx.stage, ctx.model
    args = StageTrainingArguments.for_stage(ctx.cfg, with_encoder_lr(ctx.trained, model, ctx.where), ctx.index, work,
                                            ctx.task.label_names)
    try:
        return StageTrainer(
            model=model, args=args, train_dataset=ctx.train_set, eval_dataset=ctx.splits.eval,
            data_collator=ctx.task.collator(stage, training=True, model_config=model.config, **ctx.collator_args),
            eval_data_collator=ctx.task.collator(stage, training=False, model_config=model.config),
            compute_metrics=ctx.task.compute_metrics, callbacks=ctx.callbacks, **ctx.trainer_args,
        )
    except (ValueError, TypeError, ImportError) as exc:  # e.g. a training_args value only the accelerator judges
        passed = f" (training_args: {', '.join(stage.training_args)})" if stage.training_args else ""
        raise StageError(f"stage {ctx.index} '{stage.name}': the Trainer refused this stage's arguments{passed}: "
                         f"{first_line(exc)}") from None


def _log_start(ctx: StageContext, resume: str | None) -> None:
    stage, model, n = ctx.stage, ctx.model, len(ctx.cfg.stages)
    started_from = ctx.start.dir if ctx.start else "random init"
    if getattr(model, "fits_without_gradients", False):
        logger.info("stage %d/%d '%s': %s fitted in one pass on the training split%s", ctx.index, n, stage.name,
                    model.config.estimator, " and the eval split" if stage.train_on_eval else "")
    elif ctx.description:
        logger.info("stage %d/%d '%s': %s, from %s", ctx.index, n, stage.name, ctx.description, started_from)
    else:
        total = sum(p.numel() for p in model.parameters())
        logger.info("stage %d/%d '%s': %s epochs, lr %g, loss %s, %d of %d parameters frozen, from %s%s%s", ctx.index,
                    n, stage.name, stage.epochs, stage.lr, stage.loss["type"], ctx.frozen, total, started_from,
                    f", resuming {resume}" if resume else "", ctx.log_suffix)


def _record(ctx: StageContext, trainer, metrics: dict, test_metrics: dict, training_time: float, train_sha256: str,
            world_size: int) -> StageRecord:
    cfg, stage = ctx.cfg, ctx.stage
    kept, gain = decide_kept(cfg, ctx.records, metrics)
    record = StageRecord(
        stage_index=ctx.index, stage_name=stage.name, stage_description=stage.description, task=cfg.task,
        data=dataclasses.asdict(cfg.data), train_data_sha256=train_sha256, stage_config=dataclasses.asdict(stage),
        metrics={k: v for k, v in metrics.items() if k.startswith("eval_")},
        test_metrics={k: v for k, v in test_metrics.items() if k.startswith("test_")},
        training_time_s=round(training_time, 3),
        train_samples_per_second=round(len(ctx.train_set) * stage.epochs / max(training_time, 1e-9), 1),
        global_steps=trainer.state.global_step, kept=kept, improvement=gain,
        improvement_threshold=cfg.improvement_threshold, started_from=ctx.start.dir if ctx.start else None,
        pseudo_labels=ctx.pseudo_labels, skipped_steps=trainer.skipped_steps if stage.on_nonfinite == "skip" else None,
        frozen_parameters=ctx.frozen, total_parameters=sum(p.numel() for p in ctx.model.parameters()),
        world_size=world_size, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
        log_history=[e for e in trainer.state.log_history
                     if "step" in e and not any(k in e for k in TRAINER_SUMMARY_KEYS)],
    )
    if ctx.resolved:  # values decided while the stage ran: pos_weight: auto, the error threshold
        record.extra["resolved"] = ctx.resolved
    record.extra.update(ctx.extra)
    return record


def _publish(ctx: StageContext, trainer, record: StageRecord, work: Path) -> None:
    """Write the stage folder atomically (model, what the task keeps beside it, card, stage.json); then drop the
    stage's Trainer checkpoints."""
    folder, label = ctx.folder, stage_dirname(ctx.index, ctx.stage.name)

    def fill(staged: Path) -> None:
        model = trainer.accelerator.unwrap_model(trainer.model)
        save_stage_model(model, staged)
        ctx.task.save_with_model(staged, model.config)  # what a pipeline needs beside the model
        card = stage_card(staged, record, ctx.records, ctx.cfg.to_dict(), folder.path, native=is_native(staged))
        (staged / "README.md").write_text(card, encoding="utf-8")

    try:
        folder.publish_stage(record, fill)
    except OSError as exc:  # disk full, read-only or vanished folder: the half-written stage never counts
        raise StageError(f"stage {ctx.index} '{ctx.stage.name}': could not save {folder.stage_path(label)} "
                         f"({exc.strerror or exc}); earlier stages are intact and its checkpoint is kept: free "
                         "space or fix the folder's permissions, then rerun the same command to resume") from None
    shutil.rmtree(work, ignore_errors=True)


def _log_kept(ctx: StageContext, record: StageRecord, metrics: dict) -> None:
    key, stage = ctx.cfg.metric_for_best_model, ctx.stage
    if record.kept:
        logger.info("stage %d '%s' kept: %s = %.5g", ctx.index, stage.name, key, metrics[key])
    else:
        logger.warning(
            "stage %d '%s' NOT KEPT: %s = %.5g improves the best kept stage by %.5g < improvement_threshold %g; "
            "the next stage starts from %s", ctx.index, stage.name, key, metrics[key], record.improvement,
            ctx.cfg.improvement_threshold, latest_kept(ctx.records).dir,
        )


def best_checkpoint_metrics(trainer) -> dict | None:
    """The evaluation logged for the checkpoint the Trainer restored at the end of training.

    That checkpoint was saved right after this evaluation, so evaluating it again would only repeat
    the same numbers at the cost of a pass over the validation set.
    """
    best = trainer.state.best_model_checkpoint
    if not best:
        return None
    step = int(Path(best).name.rsplit("-", 1)[-1])
    for entry in trainer.state.log_history:
        if entry.get("step") == step and "eval_loss" in entry:
            return {k: v for k, v in entry.items() if k.startswith("eval_")}
    return None
