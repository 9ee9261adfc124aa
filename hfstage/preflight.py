"""Checks made before anything is trained or written: what only the task, the model and the run's
processes can tell about a recipe (the config itself was checked when it was loaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hfstage.config import RunConfig
from hfstage.devices import cpu_only, distributed_state
from hfstage.errors import CheckpointError, ConfigError, first_line
from hfstage.losses import build_loss
from hfstage.adapt import check_adabn_model, check_domain_adaptation
from hfstage.pseudo import check_pseudo_labels
from hfstage.resolve import resolve_checkpoint
from hfstage.surgery import check_patterns, with_encoder_lr


def check_stages(cfg: RunConfig, task, model) -> None:
    """Every stage against the task (augmentations, losses, labels) and the model (name patterns, heads)."""
    batch_targets = set(task.label_names)
    if getattr(model, "fits_without_gradients", False):
        check_fitted_stages(cfg)
    for index, stage in enumerate(cfg.stages, 1):
        where = f"stages.{index} ({stage.name})"
        task.check_stage(stage, where)
        task.check_stage_model(stage, model, where)
        if stage.group_by_length and not task.has_lengths:
            raise ConfigError(f"{where}.group_by_length: the {cfg.task} data has no per-sample lengths to group by "
                              "(speech clips and sequences do)")
        with_encoder_lr(stage, model, where)
        check_pseudo_labels(cfg, task, stage, where)
        check_domain_adaptation(cfg, task, stage, where)
        if stage.kind == "adabn" or stage.freeze_batchnorm:
            check_adabn_model(model, where, "kind: adabn" if stage.kind == "adabn" else "freeze_batchnorm")
        loss = build_loss(stage.loss, stage.label_smoothing, f"{where}.loss")
        missing = [k for k in loss.label_keys if k not in batch_targets]
        if missing:
            raise ConfigError(f"{where}.loss: loss '{stage.loss['type']}' needs '{missing[0]}' in every batch, which "
                              f"{cfg.task} data does not have")
        try:
            loss.bind_model(model)
        except ConfigError as exc:
            raise ConfigError(f"{where}.loss: {exc}") from None
        check_patterns(model, stage, where, cfg.model["type"])
        if stage.teacher:
            try:
                teacher = resolve_checkpoint(stage.teacher["checkpoint"])
            except CheckpointError as exc:
                raise ConfigError(f"{where}.teacher: {exc}") from None
            if teacher.task != cfg.task:
                raise ConfigError(f"{where}.teacher: {teacher.stage_dir} solves {teacher.task}, this run {cfg.task}")
        if stage.on_nonfinite == "skip" and distributed_state().num_processes > 1:
            raise ConfigError(f"{where}.on_nonfinite: skip works in one process only (a skipped batch would leave the "
                              "other processes waiting for its gradients); use stop")
        if stage.mixed_precision == "fp16" and cpu_only():
            raise ConfigError(f"{where}.mixed_precision: fp16 needs a GPU (on the CPU it would silently run fp32); use bf16")
    check_stage_arguments(cfg, tuple(task.label_names))


# what a model fitted in one pass (models/estimator.py) reads of its stage; every other field is refused
FITTED_STAGE_FIELDS = ("name", "description", "batch_size", "eval_batch_size", "train_on_eval")


def check_fitted_stages(cfg: RunConfig) -> None:
    """A model fitted in one pass has one stage (a fit), or two (a fit, then a ``train_on_eval`` refit on all
    labelled data), and no gradient settings: a set learning rate, epochs, loss or augmentation would be silently
    ignored, so each is refused by name."""
    import dataclasses

    from hfstage.config import StageConfig

    where = f"model.type {cfg.model['type']}"
    refit = len(cfg.stages) == 2 and cfg.stages[1].train_on_eval and not cfg.stages[0].train_on_eval
    if len(cfg.stages) != 1 and not refit:
        raise ConfigError(f"stages: {where} is fitted in one pass (no gradient steps); give it one stage, or two "
                          f"whose second refits on all labelled data (train_on_eval: true), not {len(cfg.stages)}")
    for index, stage in enumerate(cfg.stages, 1):
        blank = StageConfig(name=stage.name)
        for f in dataclasses.fields(StageConfig):
            if f.name not in FITTED_STAGE_FIELDS and getattr(stage, f.name) != getattr(blank, f.name):
                raise ConfigError(f"stages.{index}.{f.name}: {where} is fitted in one pass and has no {f.name}; set "
                                  "its parameters in model.params (e.g. learning_rate, num_leaves for LightGBM)")


def check_stage_arguments(cfg, label_names: Sequence[str] = ("labels",)) -> None:
    """Build every stage's arguments as the Trainer will, so what transformers refuses (an optimizer whose package
    is missing, a scheduler's arguments, a combination of fields) stops the run before anything is written."""
    import torch
    from transformers import Trainer, get_scheduler

    from hfstage.trainer import StageTrainingArguments

    work = Path(cfg.output_dir) / "checkpoints" / "preflight"
    for index, stage in enumerate(cfg.stages, 1):
        where = f"stages.{index} ({stage.name})"
        passed = f" (training_args: {', '.join(stage.training_args)})" if stage.training_args else ""
        try:
            args = StageTrainingArguments.for_stage(cfg, stage, index, work, label_names)
        except (ValueError, TypeError, ImportError, KeyError) as exc:
            raise ConfigError(f"{where}: TrainingArguments refused this stage{passed}: {first_line(exc)}") from None
        try:
            Trainer.get_optimizer_cls_and_kwargs(args)
        except (ValueError, TypeError, ImportError, KeyError) as exc:
            raise ConfigError(f"{where}.optim: {stage.optim!r}: {first_line(exc)}") from None
        if stage.scheduler != "reduce_lr_on_plateau":  # that one needs the eval metric, not a step count
            probe = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=stage.lr)
            try:
                get_scheduler(stage.scheduler, probe, num_warmup_steps=1, num_training_steps=100,
                              scheduler_specific_kwargs=dict(stage.scheduler_kwargs))
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{where}.scheduler_kwargs: scheduler {stage.scheduler!r} refused "
                                  f"{dict(stage.scheduler_kwargs)}: {first_line(exc)}") from None
        if stage.mixed_precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"{where}.mixed_precision: this GPU has no bf16; use fp16")

