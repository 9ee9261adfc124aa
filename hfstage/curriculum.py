"""The curriculum runner: one engine that trains any list of stages, in order, for every task.

Each stage gets a fresh ``StageTrainingArguments`` and ``StageTrainer``, starts from the weights of
the latest kept stage, and ends with its best-within-stage weights written atomically to
``<output_dir>/stage_<N>_<name>/`` (``model.safetensors``, ``config.json``, ``stage.json``). A stage is
kept when it improves the tracked metric over the best kept stage by at least
``improvement_threshold``, so with a threshold >= 0 the latest kept stage is also the best one; a
negative threshold keeps every stage and each continues from the one before. Rerunning the same
command resumes: finished stages are skipped and an interrupted stage continues from its last Trainer
checkpoint under ``<output_dir>/checkpoints/``. What is kept, resumed and recorded is the run folder's
business (``run_dir.py``); this module only runs the stages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import shutil
import signal
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from transformers import EarlyStoppingCallback, set_seed

from hfstage.callbacks import StageCallback, TrainingLogCallback
from hfstage.checkpoint import RunLock
from hfstage.config import RunConfig, StageConfig, init_stage_index
from hfstage.curves import draw_curves
from hfstage.devices import ddp_timeout, distributed_state
from hfstage.errors import (
    CheckpointError,
    ConfigError,
    HfstageError,
    Interrupted,
    PeerLost,
    StageError,
    first_line,
)
from hfstage.folds import JoinedSplits, fold_splits
from hfstage.hub import HubPushCallback, require_token
from hfstage.log import log_to_file, main_process_only, setup_console
from hfstage.adapt import fit_target_match, target_images
from hfstage.cards import stage_card
from hfstage.models import build_model, save_stage_model
from hfstage.models.base import is_native
from hfstage.preflight import check_stages
from hfstage.pseudo import add_pseudo_labels
from hfstage.resolve import load_stage_model, resolve_checkpoint
from hfstage.run_dir import (
    CURVES_PNG,
    RunDir,
    RunRecord,
    StageRecord,
    decide_kept,
    format_stage_table,
    last_complete_checkpoint,
    latest_kept,
    stage_dirname,
)
from hfstage.surgery import freeze, keep_batchnorm_statistics, set_dropout, with_encoder_lr
from hfstage.tasks import TASKS, Splits
from hfstage.tracking import TRAINER_SUMMARY_KEYS, CurriculumTracking
from hfstage.trainer import StageTrainer, StageTrainingArguments

logger = logging.getLogger("hfstage")


def _resolve_auto(stage: StageConfig, task, train_set, where: str) -> tuple[StageConfig, dict]:
    """The stage as it trains, with ``auto`` values worked out from the training split (``loss.pos_weight: auto``:
    the ratio of correct to mispronounced phonemes); and those values, for stage.json."""
    if stage.loss.get("pos_weight") != "auto":
        return stage, {}
    rate = task.error_rate(train_set)
    if rate is None:
        raise ConfigError(f"{where}.loss.pos_weight: auto needs a task with per-phoneme error labels (speech)")
    if not 0 < rate < 1:
        raise ConfigError(f"{where}.loss.pos_weight: auto needs correct and mispronounced phonemes in the training "
                          f"split (its error rate is {rate:g}); give a number")
    value = round((1 - rate) / rate, 4)
    logger.info("stage '%s': loss.pos_weight auto = %g (training error rate %.4f)", stage.name, value, rate)
    return dataclasses.replace(stage, loss={**stage.loss, "pos_weight": value}), {"loss.pos_weight": value}


def run(cfg: RunConfig, config_file: str | None = None, callbacks: Sequence[StageCallback] = (),
        splits: Splits | None = None, task=None) -> RunRecord:
    """Run (or resume) the whole curriculum; returns the final run.json record. ``splits`` (and the ``task`` that
    read them): the data, when it does not come from ``cfg.data`` (``hfstage.train`` with datasets passed in)."""
    state = distributed_state(ddp_timeout(cfg.stages))
    main = state.is_main_process
    main_process_only(main)
    folder = RunDir(cfg.output_dir)
    task = task or TASKS.get(cfg.task, "task")()
    if splits is None:
        splits = task.load_splits(cfg.data, model=cfg.model)
    if cfg.fold is not None:
        splits = fold_splits(splits, cfg)
    set_seed(cfg.seed)
    check_stages(cfg, task, build_model(cfg.model, **task.model_args(splits)))
    saved = folder.check_resumable(cfg)
    records = folder.finished_on_disk(cfg)
    created_at = saved.created_at if saved else None
    if cfg.push_to_hub:  # every process checks, so a refusal stops all of them before training
        require_token(cfg.hub_repo_id, "push_to_hub", cfg.hub_private)
    state.wait_for_everyone()  # every process checked the same folder before anyone writes to it
    lock = RunLock(folder.path)
    setup_console()  # so a stale-lock takeover is reported
    _on_every_process(state, lock.acquire if main else None)
    log_to_file(folder.training_log if main else None)
    pusher = HubPushCallback(folder.path, cfg.hub_repo_id, cfg.hub_private) if cfg.push_to_hub and main else None
    callbacks = [*callbacks, pusher] if pusher else callbacks
    try:
        with _signals_interrupt():
            final = _run_stages(cfg, config_file, callbacks, state, task, splits, records, created_at,
                                (saved.trackers if saved else None) or {})
        if pusher is not None:
            pusher.finish()
            logger.info("run %s is on the Hub: %s", folder, cfg.hub_repo_id)
        return final
    except BaseException:
        if pusher is not None:  # let the stages already pushing land; the run's own error is what is raised
            try:
                pusher.finish(final_push=False)
            except Exception as exc:  # noqa: BLE001
                logger.warning("push of a finished stage also failed: %s", exc)
        raise
    finally:
        lock.release()


@contextlib.contextmanager
def _signals_interrupt():
    """While a run trains, SIGTERM and SIGINT raise ``Interrupted`` (the run is then marked interrupted)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signum, signal.SIG_IGN)  # a second signal must not interrupt writing run.json
        raise Interrupted(signal.Signals(signum).name, 128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _on_every_process(state, action) -> None:
    """Run ``action`` on the main process; if it raises an hfstage error, raise it on every process.

    Without this a refusal on the main process would leave the other processes waiting forever.
    """
    error = None
    if action is not None:
        try:
            action()
        except CheckpointError as exc:
            error = str(exc)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        box = [error]
        broadcast_object_list(box, from_process=0)
        error = box[0]
    if error:
        raise CheckpointError(error)


def _check_shared_output(state, folder: RunDir) -> None:
    """Every process sees the run.json the main process just wrote: the run folder is written once and read by all
    (the previous stage, the checkpoint to resume), so nodes that do not share output_dir's filesystem would train
    from different weights. Refused on every process at once, before any stage."""
    if state.num_processes < 2:
        return
    from accelerate.utils import gather_object

    seen = gather_object([(folder.run_json.is_file(), socket.gethostname())])
    blind = sorted({f"rank {rank} ({host})" for rank, (ok, host) in enumerate(seen) if not ok})
    if blind:
        raise ConfigError(f"output_dir {folder.path}: {', '.join(blind)} cannot see the run.json the main process wrote "
                          "there: the nodes do not share this folder. hfstage writes the run folder once (global "
                          "main process) and every process reads the previous stage and its checkpoints from it: put "
                          "output_dir on a filesystem every node mounts (NFS, Lustre, a cloud file store), by the "
                          "same path on every node")


_TIMED_OUT = ("timed out", "timeout")
_PEER_GONE = ("connection closed", "connection reset", "broken pipe", "connection refused", "socket closed",
              "end of file", "peer")


def collective_failure(exc: BaseException, stage: str | None, processes: int, timeout: float) -> StageError | None:
    """The error to report when a collective operation of a distributed run failed because another process stalled
    (a timeout: ``failed``) or died (its connection closed: ``PeerLost``, the run ``interrupted``); None for any
    other error, and in a single process."""
    if processes < 2 or not isinstance(exc, RuntimeError):
        return None
    text = str(exc).lower()
    where = stage or "the run"
    if any(k in text for k in _TIMED_OUT):
        return StageError(f"{where}: a collective operation across the {processes} processes timed out after "
                          f"{timeout:g} s (training_args.ddp_timeout): another process stalled or hung (stopped, "
                          "swapping, stuck reading data); the stage's last checkpoint is kept: rerun the same command "
                          "to resume")
    if any(k in text for k in _PEER_GONE):
        return PeerLost(f"{where}: another process of the run died ({first_line(exc)[:200]}); the stage's last "
                        "checkpoint is kept: rerun the same command to resume")
    return None


def _run_stages(cfg, config_file, callbacks, state, task, splits, records: list[StageRecord], created_at,
                tracker_ids: dict) -> RunRecord:
    main = state.is_main_process
    folder = RunDir(cfg.output_dir)
    tracking: CurriculumTracking | None = None
    current: str | None = None  # the stage being trained

    def record_run(status: str, error: str | None = None) -> RunRecord:
        run = RunRecord.build(cfg, config_file, state.num_processes, records, status, created_at, error,
                              current if error else None, tracking.ids if tracking else tracker_ids)
        if main:
            folder.write(run)
        return run

    def record_end(status: str, error: str) -> None:
        """Mark the run failed or interrupted; the error that ended it is what is raised, whatever happens here."""
        if not main:
            return
        try:
            record_run(status, error)
        except OSError:  # the disk may be the problem: the error itself is what matters
            logger.error("could not record the %s run in %s", status, folder.run_json)
        if tracking is not None:
            tracking.finish(status)

    if main:
        folder.remove_stale_tmp()
        record_run("running")
        logger.info("run %s: %d stages, %d finished, world size %d", folder, len(cfg.stages), len(records),
                    state.num_processes)
    state.wait_for_everyone()
    try:
        _check_shared_output(state, folder)
        if main and any(r != "none" for r in cfg.report_to):
            tracking = CurriculumTracking(cfg.report_to, folder.path, cfg.project, cfg.to_dict(), tracker_ids)
            record_run("running")  # the tracker run ids, so a resumed run logs to the same tracker runs
        train_sha256 = split_sha256(cfg, task, splits, "train")  # once per run
        for index, stage in enumerate(cfg.stages, 1):
            if index <= len(records):
                logger.info("stage %d '%s' already finished; skipping", index, stage.name)
                continue
            current = stage_dirname(index, stage.name)
            records.append(train_stage(cfg, task, splits, index, stage, records, folder, callbacks, state, train_sha256,
                                       tracking))
            current = None
            if main:
                record_run("running")
                draw_curves(folder.path / CURVES_PNG, records, cfg.metric_for_best_model)
    except Interrupted as exc:
        record_end("interrupted", f"stopped by {exc.signal_name}")
        raise
    except KeyboardInterrupt:
        record_end("interrupted", "stopped by KeyboardInterrupt")
        raise
    except Exception as exc:
        lost = collective_failure(exc, current, state.num_processes, ddp_timeout(cfg.stages) or 1800)
        if lost is not None:  # another process died or stalled: one line naming the stage, not a gloo traceback
            record_end("interrupted" if isinstance(lost, PeerLost) else "failed", str(lost))
            raise lost from None
        record_end("failed", str(exc) if isinstance(exc, HfstageError) else f"{type(exc).__name__}: {exc}")
        raise
    final = RunRecord.build(cfg, config_file, state.num_processes, records, "finished", created_at,
                            trackers=tracking.ids if tracking else tracker_ids)
    if main:
        folder.write(final)
        if tracking is not None:
            tracking.finish("finished")
        logger.info("finished; best stage %s (%s)", final.best_stage, final.best_stage_dir)
        print(format_stage_table(records, final.best_stage, task.headline_metrics), flush=True)
    state.wait_for_everyone()
    return final


def _best_checkpoint_metrics(trainer) -> dict | None:
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


def split_sha256(cfg: RunConfig, task, splits, name: str) -> str:
    """SHA-256 of the run's ``train`` or ``eval`` split: what a stage trained on, so stacking can refuse leaks."""
    given = getattr(splits, f"{name}_sha256")
    if given:
        return given
    return task.data_fingerprint(cfg.data, f"{name}_file")


def train_stage(cfg: RunConfig, task, splits, index: int, stage: StageConfig, records: list[StageRecord],
                folder: RunDir, callbacks: Sequence[StageCallback], state, train_sha256: str,
                tracking: CurriculumTracking | None = None) -> StageRecord:
    """Train one stage and publish its folder; returns its stage.json record."""
    label = stage_dirname(index, stage.name)
    where = f"stages.{index} ({stage.name})"
    for cb in callbacks:
        if hasattr(cb, "on_stage_begin"):  # plain TrainerCallbacks are welcome too
            cb.on_stage_begin(stage_index=index, stage=stage, run_config=cfg)

    chosen = init_stage_index(cfg.stages, stage)
    start = records[chosen - 1] if chosen else latest_kept(records)
    if start is None:
        set_seed(cfg.seed)
        model = build_model(cfg.model, load_weights=True, **task.model_args(splits))
        started_from = None
    else:
        started_from = start.dir
        model = load_stage_model(folder.stage_path(start))
    train_set, pseudo = splits.train, None
    if stage.group_by_length and not task.has_lengths:
        raise ConfigError(f"{where}.group_by_length: the {cfg.task} data has no per-sample lengths to group by "
                          "(speech clips and sequences do)")
    if stage.pseudo_labels:  # labelled by the model this stage starts from, before it changes
        train_set, pseudo = add_pseudo_labels(cfg, task, stage, model, splits.train)
    if stage.train_on_eval:  # a refit on all labelled data: its eval metrics are in-sample from here on
        train_set = JoinedSplits(train_set, splits.eval)
    adapted, target_match, adapt_set = {}, {}, None  # domain adaptation (hfstage.adapt)
    if stage.augmentation.get("match_target"):
        target_match["target_match"], adapted["match_target"] = fit_target_match(cfg, task, stage, splits.train)
    if stage.kind == "adabn":
        adapt_set = target_images(cfg, task)
    trained, resolved = _resolve_auto(stage, task, train_set, where)
    set_dropout(model, stage.dropout)
    frozen = freeze(model, stage.freeze_patterns, where)
    if stage.freeze_batchnorm:
        keep_batchnorm_statistics(model)
    total = sum(p.numel() for p in model.parameters())

    work = folder.work_dir(label, stage, main=state.is_main_process)
    state.wait_for_everyone()
    args = StageTrainingArguments.for_stage(cfg, with_encoder_lr(trained, model, where), index, work,
                                            task.label_names)
    stage_callbacks = [TrainingLogCallback(label), *callbacks]
    if stage.early_stopping_patience:
        stage_callbacks.append(EarlyStoppingCallback(early_stopping_patience=stage.early_stopping_patience))
    if tracking is not None:  # one timeline: this stage's steps follow the earlier stages'
        tracking.begin_stage(index, stage, sum(r.global_steps or 0 for r in records))
        stage_callbacks.append(tracking)
    teacher = resolve_checkpoint(stage.teacher["checkpoint"]).load_model() if stage.teacher else None
    try:
        trainer = StageTrainer(
            model=model,
            teacher_model=teacher,
            args=args,
            train_dataset=train_set,
            eval_dataset=splits.eval,
            data_collator=task.collator(stage, training=True, model_config=model.config, **target_match),
            eval_data_collator=task.collator(stage, training=False, model_config=model.config),
            compute_metrics=task.compute_metrics,
            callbacks=stage_callbacks,
            adapt_dataset=adapt_set,
            eval_in_training=stage.train_on_eval,
        )
    except (ValueError, TypeError, ImportError) as exc:  # e.g. a training_args value only the accelerator judges
        passed = f" (training_args: {', '.join(stage.training_args)})" if stage.training_args else ""
        raise StageError(f"stage {index} '{stage.name}': the Trainer refused this stage's arguments{passed}: "
                         f"{first_line(exc)}") from None
    resume = last_complete_checkpoint(work)
    if getattr(model, "fits_without_gradients", False):
        logger.info("stage %d/%d '%s': %s fitted in one pass on the training split%s", index, len(cfg.stages),
                    stage.name, model.config.estimator, " and the eval split" if stage.train_on_eval else "")
    elif adapt_set is not None:
        logger.info("stage %d/%d '%s': BatchNorm statistics re-estimated on %d images of %s (no gradient steps), "
                    "from %s", index, len(cfg.stages), stage.name, len(adapt_set), cfg.data.unlabeled_file,
                    started_from or "random init")
    else:
        logger.info(
            "stage %d/%d '%s': %s epochs, lr %g, loss %s, %d of %d parameters frozen, from %s%s%s",
            index, len(cfg.stages), stage.name, stage.epochs, stage.lr, stage.loss["type"], frozen, total,
            started_from or "random init", f", resuming {resume}" if resume else "",
            f", on train + eval ({len(train_set)} samples; eval metrics in-sample)" if stage.train_on_eval else "",
        )
    began = time.time()
    try:
        trainer.train(resume_from_checkpoint=resume)
    except OSError as exc:  # a checkpoint could not be written (disk full, read-only folder)
        raise StageError(f"stage {index} '{stage.name}': could not write its checkpoint under {work} "
                         f"({exc.strerror or exc}); earlier stages are intact: free space or fix the folder's "
                         "permissions, then rerun the same command to resume") from None
    training_time = time.time() - began
    metrics = _best_checkpoint_metrics(trainer) or trainer.evaluate()
    decision = task.tuned_decision(metrics)  # speech: the error flags' threshold, chosen on the eval split (best F1)
    if decision:
        if stage.train_on_eval and start is not None:  # eval is in-sample now: keep the threshold chosen held out
            saved = trainer.accelerator.unwrap_model(trainer.model).config
            decision = {key: getattr(saved, key, value) for key, value in decision.items()}
        trainer.compute_metrics = functools.partial(task.compute_metrics, **decision)  # the test split uses it
        trainer.accelerator.unwrap_model(trainer.model).config.update(decision)  # and so do evaluate and the pipeline
        resolved.update(decision)
    test_metrics = trainer.evaluate(splits.test, metric_key_prefix="test") if splits.test is not None else {}
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise StageError(f"stage {index} '{stage.name}': {key} is {value}; the stage's files were not written")
    kept, gain = decide_kept(cfg, records, metrics)
    record = StageRecord(
        stage_index=index,
        stage_name=stage.name,
        stage_description=stage.description,
        task=cfg.task,
        data=dataclasses.asdict(cfg.data),
        train_data_sha256=train_sha256,
        stage_config=dataclasses.asdict(stage),
        metrics={k: v for k, v in metrics.items() if k.startswith("eval_")},
        test_metrics={k: v for k, v in test_metrics.items() if k.startswith("test_")},
        training_time_s=round(training_time, 3),
        train_samples_per_second=(None if adapt_set is not None
                                  else round(len(train_set) * stage.epochs / max(training_time, 1e-9), 1)),
        global_steps=trainer.state.global_step,
        kept=kept,
        improvement=gain,
        improvement_threshold=cfg.improvement_threshold,
        started_from=started_from,
        pseudo_labels=pseudo,
        skipped_steps=trainer.skipped_steps if stage.on_nonfinite == "skip" else None,
        frozen_parameters=frozen,
        total_parameters=total,
        world_size=state.num_processes,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
        log_history=[e for e in trainer.state.log_history
                     if "step" in e and not any(k in e for k in TRAINER_SUMMARY_KEYS)],
    )
    if resolved:  # values decided while the stage ran: pos_weight: auto, the error threshold
        record.extra["resolved"] = resolved
    if adapt_set is not None:
        adapted["adabn"] = trainer.adapted
    if stage.train_on_eval:  # stacking refuses this stage's predictions of the eval split
        record.extra["trained_on_eval"] = {"eval_data_sha256": split_sha256(cfg, task, splits, "eval"),
                                           "train_samples": len(train_set)}
    record.extra.update(adapted)
    if state.is_main_process:
        def fill(staged: Path) -> None:
            model = trainer.accelerator.unwrap_model(trainer.model)
            save_stage_model(model, staged)
            task.save_with_model(staged, model.config)  # what a pipeline needs beside the model
            card = stage_card(staged, record, records, cfg.to_dict(), folder.path, native=is_native(staged))
            (staged / "README.md").write_text(card, encoding="utf-8")

        try:
            folder.publish_stage(record, fill)
        except OSError as exc:  # disk full, read-only or vanished folder: the half-written stage never counts
            raise StageError(f"stage {index} '{stage.name}': could not save {folder.stage_path(label)} "
                             f"({exc.strerror or exc}); earlier stages are intact and its checkpoint is kept: free "
                             "space or fix the folder's permissions, then rerun the same command to resume") from None
        shutil.rmtree(work, ignore_errors=True)
    state.wait_for_everyone()
    key = cfg.metric_for_best_model
    if kept:
        logger.info("stage %d '%s' kept: %s = %.5g", index, stage.name, key, metrics[key])
    else:
        logger.warning(
            "stage %d '%s' NOT KEPT: %s = %.5g improves the best kept stage by %.5g < improvement_threshold %g; "
            "the next stage starts from %s", index, stage.name, key, metrics[key], gain, cfg.improvement_threshold,
            latest_kept(records).dir,
        )
    if tracking is not None:
        tracking.end_stage(record)
    for cb in callbacks:
        if hasattr(cb, "on_stage_end"):
            cb.on_stage_end(stage_index=index, stage=stage, run_config=cfg, record=record)
    return record
