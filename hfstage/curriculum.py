"""The curriculum runner: one engine that trains any list of stages, in order, for every task.

Each stage gets a fresh ``StageTrainingArguments`` and ``StageTrainer``, starts from the weights of
the latest kept stage, and ends with its best-within-stage weights written atomically to
``<output_dir>/stage_<N>_<name>/`` (``model.safetensors``, ``config.json``, ``stage.json``). A stage is
kept when it improves the tracked metric over the best kept stage by at least
``improvement_threshold``, so with a threshold >= 0 the latest kept stage is also the best one; a
negative threshold keeps every stage and each continues from the one before (the user's S1 system). Rerunning the same command resumes: finished stages are skipped and an
interrupted stage continues from its last Trainer checkpoint under ``<output_dir>/checkpoints/``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from transformers import AutoModel, EarlyStoppingCallback, set_seed

from hfstage.callbacks import StageCallback, TrainingLogCallback
from hfstage.checkpoint import (
    RUN_FORMAT,
    RunLock,
    atomic_write_json,
    fingerprint,
    publish_dir,
    read_json,
    read_run_record,
    remove_stale_tmp,
    staging_dir,
)
from hfstage.config import RunConfig, StageConfig, config_from_dict, init_stage_index
from hfstage.devices import cpu_only, distributed_state
from hfstage.errors import CheckpointError, ConfigError, StageError
from hfstage.evaluation import resolve_checkpoint
from hfstage.losses import LOSSES
from hfstage.models import build_model
from hfstage.pseudo import add_pseudo_labels, check_pseudo_labels
from hfstage.reporting import format_number, format_table, versions
from hfstage.tasks import TASKS
from hfstage.trainer import (
    StageTrainer,
    StageTrainingArguments,
    freeze,
    frozen_names,
    matching,
    set_dropout,
)

logger = logging.getLogger("hfstage")

RUN_JSON = "run.json"
STAGE_JSON = "stage.json"
TRAINING_LOG = "training.log"
CHECKPOINTS = "checkpoints"
# Fields that may differ on resume: how a run is logged, where it lives, and quick_test, whose
# effects are already written into the stages and the data fields that are compared.
COSMETIC_FIELDS = ("report_to", "logging_steps", "output_dir", "quick_test", "quick_test_samples",
                   "push_to_hub", "hub_repo_id", "hub_private")


def stage_dirname(index: int, name: str) -> str:
    return f"stage_{index}_{name}"


# --------------------------------------------------------------------------------------------------
# Checks done before anything is trained or written


def check_stages(cfg: RunConfig, task, model) -> None:
    """Validate what only the task and the model can check: augmentations and name patterns."""
    names = [n for n, _ in model.named_parameters()]
    for index, stage in enumerate(cfg.stages, 1):
        where = f"stages.{index} ({stage.name})"
        task.check_stage(stage, where)
        if hasattr(task, "check_stage_model"):
            task.check_stage_model(stage, model, where)
        with_encoder_lr(stage, model, where)
        check_pseudo_labels(cfg, task, stage, where)
        loss_cls = LOSSES.get(stage.loss, f"{where}.loss")
        if hasattr(loss_cls, "bind_model"):
            try:
                loss_cls().bind_model(model)
            except ConfigError as exc:
                raise ConfigError(f"{where}.loss: {exc}") from None
        for field in ("freeze_patterns", "lr_multipliers"):
            for pattern in getattr(stage, field):
                if not matching(names, pattern):
                    raise ConfigError(
                        f"{where}.{field}: {pattern!r} matches no parameter of model "
                        f"'{cfg.model['type']}' (names look like {', '.join(names[:3])})"
                    )
        if stage.freeze_patterns and len(frozen_names(names, stage.freeze_patterns)) == len(names):
            raise ConfigError(f"{where}.freeze_patterns: every parameter would be frozen; nothing would train")
        if stage.teacher:
            try:
                teacher = resolve_checkpoint(stage.teacher)
            except CheckpointError as exc:
                raise ConfigError(f"{where}.teacher: {exc}") from None
            if teacher.task != cfg.task:
                raise ConfigError(f"{where}.teacher: {teacher.stage_dir} solves {teacher.task}, this run {cfg.task}")
        if stage.on_nonfinite == "skip" and distributed_state().num_processes > 1:
            raise ConfigError(f"{where}.on_nonfinite: skip works in one process only (a skipped batch would leave the "
                              "other processes waiting for its gradients); use stop")
        if stage.mixed_precision == "fp16" and cpu_only():
            raise ConfigError(f"{where}.mixed_precision: fp16 needs a GPU (on the CPU it would silently run fp32); use bf16")


def _with_current_defaults(saved: dict[str, Any], where: str) -> dict[str, Any]:
    """A run.json config with the fields that newer hfstage versions added filled with their defaults.

    A run written before a field existed behaved as that field's default, so resuming it with this
    version must not read the missing field as a different run. A field this version no longer knows
    leaves the config as written (the comparison then names it).
    """
    try:
        filled = json.loads(json.dumps(config_from_dict(saved, where).to_dict()))
    except ConfigError:
        return saved
    filled["quick_test"] = saved.get("quick_test", filled.get("quick_test"))  # config_from_dict resets it
    return filled


def _comparable(config: dict[str, Any], finished: int) -> dict[str, Any]:
    out = {k: v for k, v in config.items() if k not in COSMETIC_FIELDS and k != "stages"}
    out["stages"] = config.get("stages", [])[:finished]
    return out


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b), 1):
            out += _diff(x, y, f"{prefix}.{i}")
        return out
    return [] if a == b else [f"{prefix}: {a!r} -> {b!r}"]


def finished_stage_records(out: Path, cfg: RunConfig) -> list[dict]:
    """Records of the stages already finished in ``out``, in order, stopping at the first gap."""
    records = []
    for index, stage in enumerate(cfg.stages, 1):
        path = out / stage_dirname(index, stage.name) / STAGE_JSON
        if not path.is_file():
            break
        try:
            records.append(read_json(path))
        except (json.JSONDecodeError, OSError) as exc:
            raise CheckpointError(f"{path}: unreadable stage record ({exc}); delete that stage folder to retrain it")
    return records


def check_output_dir(out: Path, cfg: RunConfig) -> dict | None:
    """Refuse an output_dir that holds a different run; return its run.json when it is this run."""
    run_json = out / RUN_JSON
    if not run_json.is_file():
        if out.is_dir() and any(p.name.startswith("stage_") for p in out.iterdir()):
            raise ConfigError(f"{out}: holds stage folders but no {RUN_JSON}; it is not an hfstage run this command can resume")
        return None
    try:
        saved = read_run_record(run_json)
    except CheckpointError as exc:
        raise ConfigError(f"{exc}; choose another output_dir") from None
    saved_config = _with_current_defaults(saved["config"], str(run_json))
    finished = len(finished_stage_records(out, cfg))
    new = json.loads(json.dumps(cfg.to_dict()))
    diffs = _diff(_comparable(saved_config, finished), _comparable(new, finished))
    if diffs:
        raise ConfigError(
            f"{run_json}: output_dir holds a different run ({'; '.join(diffs[:5])}); "
            "choose another output_dir, or delete this one to start over"
        )
    return saved


# --------------------------------------------------------------------------------------------------
# The run


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (it may be replaced after set-up, e.g. by pytest)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(out: Path | None, main: bool) -> None:
    """hfstage's logger to stderr, and (main process) to ``<output_dir>/training.log``."""
    logger.setLevel(logging.INFO)
    if not any(getattr(h, "_hfstage", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        handler._hfstage = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    for h in list(logger.handlers):
        if isinstance(h, logging.FileHandler):
            logger.removeHandler(h)
            h.close()
    if out is not None and main:
        out.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(out / TRAINING_LOG, encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(fh)


def better(cfg: RunConfig, value: float, reference: float) -> float:
    """How much ``value`` improves on ``reference`` for the tracked metric (positive = better)."""
    return value - reference if cfg.greater_is_better else reference - value


def best_kept(cfg: RunConfig, records: list[dict]) -> dict | None:
    key = cfg.metric_for_best_model
    kept = [r for r in records if r.get("kept") and key in r["metrics"]]
    if not kept:
        return None
    sign = 1 if cfg.greater_is_better else -1
    return max(kept, key=lambda r: sign * r["metrics"][key])


def latest_kept(records: list[dict]) -> dict | None:
    """The stage the next one starts from."""
    kept = [r for r in records if r.get("kept")]
    return kept[-1] if kept else None


def decide_kept(cfg: RunConfig, records: list[dict], metrics: dict) -> tuple[bool, float | None]:
    """(kept, improvement over the best kept stage so far)."""
    key = cfg.metric_for_best_model
    if key not in metrics:
        raise ConfigError(
            f"metric_for_best_model: {key!r} is not among the stage metrics ({', '.join(sorted(metrics))})"
        )
    reference = best_kept(cfg, records)
    if reference is None:
        return True, None
    gain = better(cfg, metrics[key], reference["metrics"][key])
    return (cfg.improvement_threshold < 0 or gain >= cfg.improvement_threshold), gain


def _run_record(cfg: RunConfig, config_file: str | None, world_size: int, records: list[dict], status: str,
                created_at: str | None = None, error: str | None = None) -> dict:
    best = best_kept(cfg, records)
    finished = {r["stage_index"]: r for r in records}
    stages = []
    for index, stage in enumerate(cfg.stages, 1):
        r = finished.get(index)
        entry = {"stage_index": index, "stage_name": stage.name, "dir": stage_dirname(index, stage.name),
                 "status": "finished" if r else "pending"}
        if r:
            entry.update(kept=r["kept"], metrics=r["metrics"], training_time_s=r["training_time_s"])
        stages.append(entry)
    record = {
        "format_version": RUN_FORMAT,
        "status": status,
        "config_file": config_file,
        "config": cfg.to_dict(),
        "versions": versions(),
        "world_size": world_size,
        "metric_for_best_model": cfg.metric_for_best_model,
        "stages": stages,
        "best_stage": best["stage_index"] if best else None,
        "best_stage_dir": stage_dirname(best["stage_index"], best["stage_name"]) if best else None,
        "created_at": created_at or time.strftime("%Y-%m-%dT%H:%M:%S"),
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if error:
        record["error"] = error
    return record


def load_stage_model(stage_dir: Path):
    """Rebuild a saved stage's model from its ``config.json`` (the model type comes from there)."""
    if not (stage_dir / "config.json").is_file():
        raise CheckpointError(f"{stage_dir}: no config.json; not a saved stage")
    return AutoModel.from_pretrained(stage_dir)


def last_complete_checkpoint(work: Path) -> str | None:
    """The newest Trainer checkpoint that was written completely (a kill or a full disk can leave a newer,
    partial ``checkpoint-N``: it is removed, and training resumes from the one before)."""
    if not work.is_dir():
        return None
    for folder in sorted((p for p in work.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                         key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        has_weights = any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin"))
        if has_weights and (folder / "trainer_state.json").is_file() and (folder / "optimizer.pt").is_file():
            return str(folder)
        logger.warning("%s is incomplete (killed or out of space while saving); removing it", folder)
        shutil.rmtree(folder, ignore_errors=True)
    return None


def with_encoder_lr(stage: StageConfig, model, where: str) -> StageConfig:
    """``encoder_lr``/``head_lr`` as the stage's learning rate and a leading ``lr_multipliers`` entry."""
    if stage.encoder_lr is None and stage.head_lr is None:
        return stage
    prefix = getattr(model, "encoder_prefix", None)
    if prefix is None:
        raise ConfigError(f"{where}.encoder_lr: model '{type(model).__name__}' has no single encoder to give its own "
                          "learning rate; use lr_multipliers with parameter-name patterns")
    lr = stage.head_lr if stage.head_lr is not None else stage.lr
    multipliers = {f"{prefix}*": (stage.encoder_lr if stage.encoder_lr is not None else stage.lr) / lr}
    return dataclasses.replace(stage, lr=lr, lr_multipliers={**multipliers, **stage.lr_multipliers})


def _training_arguments(cfg: RunConfig, stage: StageConfig, index: int, work: Path,
                        label_names: Sequence[str] = ("labels",)) -> StageTrainingArguments:
    steps = stage.eval_steps
    precision = stage.mixed_precision
    args = StageTrainingArguments(
        output_dir=str(work),
        num_train_epochs=stage.epochs,
        learning_rate=stage.lr,
        lr_scheduler_type=stage.scheduler,
        warmup_steps=stage.warmup_ratio,
        weight_decay=stage.weight_decay,
        optim=stage.optim,
        per_device_train_batch_size=stage.batch_size,
        per_device_eval_batch_size=stage.eval_batch_size,
        gradient_accumulation_steps=stage.gradient_accumulation_steps,
        train_sampling_strategy="group_by_length" if stage.group_by_length else "random",
        max_grad_norm=stage.max_grad_norm,
        on_nonfinite=stage.on_nonfinite,
        eval_strategy="steps" if steps else "epoch",
        save_strategy="steps" if steps else "epoch",
        eval_steps=steps,
        save_steps=steps,
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model=cfg.metric_for_best_model,
        greater_is_better=cfg.greater_is_better,
        logging_steps=cfg.logging_steps,
        report_to=[r for r in cfg.report_to if r not in ("tensorboard", "none")] or "none",
        seed=cfg.seed + index - 1,  # each stage its own data order and augmentation draws, reproducibly
        use_cpu=cpu_only(),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        dataloader_num_workers=cfg.data.num_workers,
        label_names=list(label_names),
        remove_unused_columns=False,
        disable_tqdm=False,
        stage_name=stage.name,
        stage_index=index,
        loss=stage.loss,
        label_smoothing=stage.label_smoothing,
        focal_alpha=stage.focal_alpha,
        focal_gamma=stage.focal_gamma,
        arcface_margin=stage.arcface_margin,
        ctc_weight=stage.ctc_weight,
        error_weight=stage.error_weight,
        error_loss=stage.error_loss,
        error_pos_weight=stage.error_pos_weight,
        freeze_patterns=list(stage.freeze_patterns),
        lr_multipliers=dict(stage.lr_multipliers),
        distill_temperature=stage.distill_temperature,
        distill_alpha=stage.distill_alpha,
    )
    if precision == "no":
        args.mixed_precision = "no"  # overrides what the accelerate config asked for
    return args


def _tensorboard_callback(cfg: RunConfig, out: Path, label: str, main: bool):
    if "tensorboard" not in cfg.report_to or not main:
        return None
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(out / "logs" / label)))


def _work_dir(out: Path, label: str, stage: StageConfig) -> Path:
    """The stage's Trainer checkpoints; discarded when the stage's config changed since they were made."""
    work = out / CHECKPOINTS / label
    marker = work / "stage_config.json"
    wanted = dataclasses.asdict(stage)
    if work.is_dir():
        try:
            same = read_json(marker) == json.loads(json.dumps(wanted))
        except (OSError, json.JSONDecodeError):
            same = False
        if not same:
            logger.warning("%s: discarding checkpoints made with a different stage config", work)
            shutil.rmtree(work, ignore_errors=True)
    if not work.is_dir():
        atomic_write_json(marker, wanted)
    return work


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


def train_stage(cfg: RunConfig, task, splits, index: int, stage: StageConfig, records: list[dict], out: Path,
                callbacks: Sequence[StageCallback], state, train_sha256: str) -> dict:
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
        started_from = stage_dirname(start["stage_index"], start["stage_name"])
        model = load_stage_model(out / started_from)
    train_set, pseudo = splits.train, None
    if stage.group_by_length and not hasattr(splits.train, "lengths"):
        raise ConfigError(f"{where}.group_by_length: the {cfg.task} data has no per-sample lengths to group by "
                          "(speech clips and sequences do)")
    if stage.pseudo_labels:  # labelled by the model this stage starts from, before it changes
        train_set, pseudo = add_pseudo_labels(cfg, task, stage, model, splits.train)
    set_dropout(model, stage.dropout)
    frozen = freeze(model, stage.freeze_patterns, where)
    total = sum(p.numel() for p in model.parameters())

    work = _work_dir(out, label, stage) if state.is_main_process else out / CHECKPOINTS / label
    state.wait_for_everyone()
    args = _training_arguments(cfg, with_encoder_lr(stage, model, where), index, work,
                               getattr(task, "label_names", ("labels",)))
    stage_callbacks = [TrainingLogCallback(label), *callbacks]
    if stage.early_stopping_patience:
        stage_callbacks.append(EarlyStoppingCallback(early_stopping_patience=stage.early_stopping_patience))
    tb = _tensorboard_callback(cfg, out, label, state.is_main_process)
    if tb is not None:
        stage_callbacks.append(tb)
    teacher = load_stage_model(resolve_checkpoint(stage.teacher).stage_dir) if stage.teacher else None
    trainer = StageTrainer(
        model=model,
        teacher_model=teacher,
        args=args,
        train_dataset=train_set,
        eval_dataset=splits.eval,
        data_collator=task.collator(stage, training=True, model_config=model.config),
        eval_data_collator=task.collator(stage, training=False, model_config=model.config),
        compute_metrics=task.compute_metrics,
        callbacks=stage_callbacks,
    )
    resume = last_complete_checkpoint(work)
    logger.info(
        "stage %d/%d '%s': %s epochs, lr %g, loss %s, %d of %d parameters frozen, from %s%s",
        index, len(cfg.stages), stage.name, stage.epochs, stage.lr, stage.loss, frozen, total,
        started_from or "random init", f", resuming {resume}" if resume else "",
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
    test_metrics = trainer.evaluate(splits.test, metric_key_prefix="test") if splits.test is not None else {}
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise StageError(f"stage {index} '{stage.name}': {key} is {value}; the stage's files were not written")
    kept, gain = decide_kept(cfg, records, metrics)
    record = {
        "stage_index": index,
        "stage_name": stage.name,
        "stage_description": stage.description,
        "task": cfg.task,
        "data": dataclasses.asdict(cfg.data),
        "train_data_sha256": train_sha256,
        "stage_config": dataclasses.asdict(stage),
        "metrics": {k: v for k, v in metrics.items() if k.startswith("eval_")},
        "test_metrics": {k: v for k, v in test_metrics.items() if k.startswith("test_")},
        "training_time_s": round(training_time, 3),
        "train_samples_per_second": round(len(train_set) * stage.epochs / max(training_time, 1e-9), 1),
        "global_steps": trainer.state.global_step,
        "kept": kept,
        "improvement": gain,
        "improvement_threshold": cfg.improvement_threshold,
        "started_from": started_from,
        **({"pseudo_labels": pseudo} if pseudo is not None else {}),
        **({"skipped_steps": trainer.skipped_steps} if stage.on_nonfinite == "skip" else {}),
        "frozen_parameters": frozen,
        "total_parameters": total,
        "world_size": state.num_processes,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if state.is_main_process:
        staged = None
        try:
            staged = staging_dir(out / label)
            trainer.accelerator.unwrap_model(trainer.model).save_pretrained(staged, safe_serialization=True)
            if hasattr(task, "save_with_model"):  # e.g. the speech processor: model and processor reload together
                task.save_with_model(staged)
            atomic_write_json(staged / STAGE_JSON, record)
            publish_dir(staged, out / label)
        except OSError as exc:  # disk full, read-only or vanished folder: the half-written stage never counts
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)
            raise StageError(f"stage {index} '{stage.name}': could not save {out / label} ({exc.strerror or exc}); "
                             "earlier stages are intact and its checkpoint is kept: free space or fix the folder's "
                             "permissions, then rerun the same command to resume") from None
        shutil.rmtree(work, ignore_errors=True)
    state.wait_for_everyone()
    key = cfg.metric_for_best_model
    if kept:
        logger.info("stage %d '%s' kept: %s = %.5g", index, stage.name, key, metrics[key])
    else:
        logger.warning(
            "stage %d '%s' NOT KEPT: %s = %.5g improves the best kept stage by %.5g < improvement_threshold %g; "
            "the next stage starts from %s",
            index, stage.name, key, metrics[key], gain, cfg.improvement_threshold,
            stage_dirname(latest_kept(records)["stage_index"], latest_kept(records)["stage_name"]),
        )
    for cb in callbacks:
        if hasattr(cb, "on_stage_end"):
            cb.on_stage_end(stage_index=index, stage=stage, run_config=cfg, record=record)
    return record


def run(cfg: RunConfig, config_file: str | None = None, callbacks: Sequence[StageCallback] = ()) -> dict:
    """Run (or resume) the whole curriculum; returns the final run.json record."""
    state = distributed_state()
    main = state.is_main_process
    out = Path(cfg.output_dir)
    task = TASKS.get(cfg.task, "task")()
    splits = task.load_splits(cfg.data)
    if cfg.fold is not None:
        from hfstage.folds import fold_splits

        splits = fold_splits(splits, cfg)
    set_seed(cfg.seed)
    check_stages(cfg, task, build_model(cfg.model, **task.model_args(splits)))
    saved = check_output_dir(out, cfg)
    records = finished_stage_records(out, cfg)
    created_at = saved.get("created_at") if saved else None
    if cfg.push_to_hub:  # every process checks, so a refusal stops all of them before training
        from hfstage.hub import HubPushCallback, require_token

        require_token(cfg.hub_repo_id, "push_to_hub", cfg.hub_private)
    state.wait_for_everyone()  # every process checked the same folder before anyone writes to it
    lock = RunLock(out)
    setup_logging(None, main)  # so a stale-lock takeover is reported
    _on_every_process(state, lock.acquire if main else None)
    setup_logging(out, main)
    pusher = HubPushCallback(out, cfg.hub_repo_id, cfg.hub_private) if cfg.push_to_hub and main else None
    callbacks = [*callbacks, pusher] if pusher else callbacks
    try:
        final = _run_stages(cfg, config_file, callbacks, state, task, splits, records, created_at)
        if pusher is not None:
            pusher.finish()
            logger.info("run %s is on the Hub: %s", out, cfg.hub_repo_id)
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


def run_seeds(cfg: RunConfig, config_file: str | None = None, callbacks: Sequence[StageCallback] = ()) -> list[dict]:
    """One run per seed of ``cfg.seeds`` in ``<output_dir>/seed_<s>`` (or the single run when there are none)."""
    from hfstage.folds import run_folds

    one_run = run_folds if cfg.folds else run
    if not cfg.seeds:
        return [one_run(cfg, config_file, callbacks)]
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"seeds: {cfg.seeds} repeats a seed")
    finals = []
    for seed in cfg.seeds:
        one = dataclasses.replace(cfg, seed=seed, seeds=[], output_dir=str(Path(cfg.output_dir) / f"seed_{seed}"),
                                  hub_repo_id=f"{cfg.hub_repo_id}-seed-{seed}" if cfg.hub_repo_id else None,
                                  stages=[dataclasses.replace(s) for s in cfg.stages])
        finals.append(one_run(one, config_file, callbacks))
    if distributed_state().is_main_process:
        print(format_seed_table(cfg, finals), flush=True)
    return finals


def format_seed_table(cfg: RunConfig, finals: list[dict]) -> str:
    """Each seed's best stage and its metrics, then mean +- std."""
    import statistics

    key = cfg.metric_for_best_model
    if cfg.folds:  # each seed is a k-fold run: its out-of-fold accuracy and CV means
        rows = [("seed", "oof_accuracy", f"{key} (CV mean)", "test_accuracy (CV mean)")]
        for seed, final in zip(cfg.seeds, finals):
            rows.append((str(seed), format_number(final["oof_accuracy"]), format_number(final.get(f"{key}_mean")),
                         format_number(final.get("test_accuracy_mean"))))
        return format_table(rows)
    rows = [("seed", "best_stage", key, "test_accuracy")]
    values: dict[str, list[float]] = {key: [], "test_accuracy": []}
    for final in finals:
        best = next((s for s in final["stages"] if s["stage_index"] == final["best_stage"]), None)
        record = read_json(Path(final["config"]["output_dir"]) / best["dir"] / STAGE_JSON) if best else {}
        metric = record.get("metrics", {}).get(key)
        test = record.get("test_metrics", {}).get("test_accuracy")
        for name, v in ((key, metric), ("test_accuracy", test)):
            if isinstance(v, (int, float)):
                values[name].append(v)
        rows.append((str(final["config"]["seed"]), final["best_stage_dir"] or "-", format_number(metric), format_number(test)))
    spread = [f"{statistics.mean(v):.4f} +- {statistics.stdev(v) if len(v) > 1 else 0.0:.4f}" if v else "-"
              for v in values.values()]
    rows.append(("mean +- std", "", *spread))
    return format_table(rows)


def _run_stages(cfg, config_file, callbacks, state, task, splits, records, created_at) -> dict:
    main = state.is_main_process
    out = Path(cfg.output_dir)
    if main:
        remove_stale_tmp(out)
        atomic_write_json(out / RUN_JSON, _run_record(cfg, config_file, state.num_processes, records, "running", created_at))
        logger.info("run %s: %d stages, %d finished, world size %d", out, len(cfg.stages), len(records), state.num_processes)
    state.wait_for_everyone()
    train_sha256 = (task.train_fingerprint(cfg.data) if hasattr(task, "train_fingerprint")  # once per run
                    else fingerprint(Path(cfg.data.path) / cfg.data.train_file))
    try:
        for index, stage in enumerate(cfg.stages, 1):
            if index <= len(records):
                logger.info("stage %d '%s' already finished; skipping", index, stage.name)
                continue
            records.append(train_stage(cfg, task, splits, index, stage, records, out, callbacks, state, train_sha256))
            if main:
                atomic_write_json(out / RUN_JSON, _run_record(cfg, config_file, state.num_processes, records, "running", created_at))
    except StageError as exc:
        if main:
            try:
                atomic_write_json(out / RUN_JSON, _run_record(cfg, config_file, state.num_processes, records, "failed",
                                                              created_at, str(exc)))
            except OSError:  # the disk may be the problem: the error itself is what matters
                logger.error("could not record the failure in %s", out / RUN_JSON)
        raise
    final = _run_record(cfg, config_file, state.num_processes, records, "finished", created_at)
    if main:
        atomic_write_json(out / RUN_JSON, final)
        table = format_stage_table(records, final["best_stage"])
        logger.info("finished; best stage %s (%s)", final["best_stage"], final["best_stage_dir"])
        print(table, flush=True)
    state.wait_for_everyone()
    return final


def format_stage_table(records: list[dict], best_stage: int | None) -> str:
    """The stages table: stage, kept, eval loss, the task's headline metrics (accuracy, or PER and error F1
    for speech) on eval and test, time."""
    speech = any("eval_per" in r["metrics"] for r in records)
    columns = ([("eval_per", "metrics"), ("eval_error_f1", "metrics"), ("test_per", "test_metrics"),
                ("test_error_f1", "test_metrics")] if speech else
               [("eval_accuracy", "metrics"), ("test_accuracy", "test_metrics")])
    header = ("stage", "kept", "eval_loss", *(name for name, _ in columns), "time_s", "started_from")
    rows = [header]
    for r in records:
        name = f"{r['stage_index']} {r['stage_name']}" + (" *" if r["stage_index"] == best_stage else "")
        rows.append((
            name,
            "yes" if r["kept"] else "no",
            format_number(r["metrics"].get("eval_loss")),
            *(format_number(r.get(where, {}).get(key)) for key, where in columns),
            format_number(r["training_time_s"], 1),
            r["started_from"] or "init",
        ))
    lines = format_table(rows).splitlines()
    if best_stage is not None:
        lines.append("* best stage")
    return "\n".join(lines)


def plan(cfg: RunConfig) -> str:
    """A dry run: what each stage changes, without loading data or training.

    The model is built from the config alone (data-derived sizes take the model's defaults), which
    is enough to resolve freeze patterns to parameter counts.
    """
    task = TASKS.get(cfg.task, "task")()
    model = build_model(cfg.model)
    check_stages(cfg, task, model)
    total = sum(p.numel() for p in model.parameters())
    header = ("#", "name", "epochs", "lr", "scheduler", "loss", "frozen", "lr_multipliers", "augmentation", "other")
    rows = [header]
    for index, stage in enumerate(cfg.stages, 1):
        chosen = set(frozen_names([n for n, _ in model.named_parameters()], stage.freeze_patterns))
        frozen = sum(p.numel() for n, p in model.named_parameters() if n in chosen)
        loss = stage.loss
        params = []
        if stage.loss == "focal":
            params += [f"a={stage.focal_alpha:g}", f"g={stage.focal_gamma:g}"]
        if stage.loss == "arcface":
            params.append(f"m={stage.arcface_margin:g}")
        if stage.label_smoothing:
            params.append(f"ls={stage.label_smoothing:g}")
        if params:
            loss += "(" + ",".join(params) + ")"
        other = []
        if stage.weight_decay:
            other.append(f"wd={stage.weight_decay:g}")
        if stage.warmup_ratio:
            other.append(f"warmup={stage.warmup_ratio:g}")
        if stage.dropout is not None:
            other.append(f"dropout={stage.dropout:g}")
        if stage.early_stopping_patience:
            other.append(f"patience={stage.early_stopping_patience}")
        if stage.mixed_precision:
            other.append(stage.mixed_precision)
        if stage.pseudo_labels:
            other.append(f"pseudo>={stage.pseudo_threshold:g}")
        rows.append((
            str(index), stage.name, f"{stage.epochs:g}", f"{stage.lr:g}", stage.scheduler, loss,
            f"{frozen}/{total}", ",".join(f"{k}x{v:g}" for k, v in stage.lr_multipliers.items()) or "-",
            ",".join(f"{k}={v:g}" for k, v in stage.augmentation.items()) or "-", " ".join(other) or "-",
        ))
    lines = format_table(rows).splitlines()
    keep = ("every stage is kept (improvement_threshold < 0)" if cfg.improvement_threshold < 0 else
            f"a stage is kept when {cfg.metric_for_best_model} improves by >= {cfg.improvement_threshold:g}")
    seed = f"seeds {cfg.seeds}" if cfg.seeds else f"seed {cfg.seed}"
    lines += ["", f"task {cfg.task}, model {cfg.model['type']}, output_dir {cfg.output_dir}, {seed}; {keep}"]
    if cfg.quick_test:
        lines.append(f"quick_test: 1 epoch per stage, {cfg.data.max_train_samples} training samples")
    if cfg.seeds:
        lines.append(f"one run per seed, in {cfg.output_dir}/seed_<s>")
    if cfg.folds:
        which = f"fold {cfg.fold} only" if cfg.fold is not None else "then oof.npy and cv.json"
        lines.append(f"{cfg.folds} stratified folds, each a run in {cfg.output_dir}/fold_<k> ({which})")
    return "\n".join(lines)
