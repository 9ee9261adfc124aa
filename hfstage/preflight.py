"""Checks made before anything is trained or written: what only the task, the model and the run's
processes can tell about a recipe (the config itself was checked when it was loaded)."""

from __future__ import annotations

from hfstage.config import RunConfig
from hfstage.devices import cpu_only, distributed_state
from hfstage.errors import CheckpointError, ConfigError
from hfstage.losses import build_loss
from hfstage.pseudo import check_pseudo_labels
from hfstage.resolve import resolve_checkpoint
from hfstage.surgery import check_patterns, with_encoder_lr


def check_stages(cfg: RunConfig, task, model) -> None:
    """Every stage against the task (augmentations, losses, labels) and the model (name patterns, heads)."""
    batch_targets = set(getattr(task, "label_names", ("labels",)))
    for index, stage in enumerate(cfg.stages, 1):
        where = f"stages.{index} ({stage.name})"
        task.check_stage(stage, where)
        if hasattr(task, "check_stage_model"):
            task.check_stage_model(stage, model, where)
        with_encoder_lr(stage, model, where)
        check_pseudo_labels(cfg, task, stage, where)
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
