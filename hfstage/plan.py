"""``hfstage plan``: a dry run that shows what each stage changes, without loading data or training."""

from __future__ import annotations

from hfstage.config import RunConfig
from hfstage.executors import build_executor, fans_out
from hfstage.losses import describe
from hfstage.models import build_model
from hfstage.preflight import check_stages
from hfstage.reporting import format_table
from hfstage.surgery import frozen_count
from hfstage.tasks import TASKS


def plan(cfg: RunConfig) -> str:
    """The stages table and the run's settings in a few lines.

    The model is built from the config alone (data-derived sizes take the model's defaults), which
    is enough to resolve freeze patterns to parameter counts.
    """
    task = TASKS.get(cfg.task, "task")()
    task.configure(cfg.data, cfg.model)  # data.columns names the task's fields
    model = build_model(cfg.model)
    check_stages(cfg, task, model)
    total = sum(p.numel() for p in model.parameters())
    header = ("#", "name", "epochs", "lr", "scheduler", "loss", "frozen", "lr_multipliers", "augmentation", "other")
    rows = [header]
    for index, stage in enumerate(cfg.stages, 1):
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
        if stage.scheduler_kwargs:
            other.append("scheduler(" + ",".join(f"{k}={v}" for k, v in stage.scheduler_kwargs.items()) + ")")
        if stage.training_args:
            other.append("training_args(" + ",".join(f"{k}={v}" for k, v in stage.training_args.items()) + ")")
        if stage.teacher:
            other.append(f"teacher={stage.teacher['checkpoint']}(T={stage.teacher['temperature']:g},"
                         f"alpha={stage.teacher['alpha']:g})")
        if getattr(model, "fits_without_gradients", False):  # no epochs, learning rate or loss to show
            params = ",".join(f"{k}={v}" for k, v in cfg.model.get("params", {}).items())
            rows.append((str(index), stage.name, "-", "-", "-", "-", "-", "-", "-",
                         f"fitted in one pass: {cfg.model.get('estimator', 'lightgbm')}({params})"))
            continue
        if stage.kind == "adabn":
            rows.append((str(index), stage.name, "-", "-", "-", "-", "-", "-", "-",
                         f"kind=adabn: BatchNorm statistics of {cfg.data.unlabeled_file}, no gradient steps"))
            continue
        rows.append((
            str(index), stage.name, f"{stage.epochs:g}", f"{stage.lr:g}", stage.scheduler,
            describe(stage.loss, stage.label_smoothing), f"{frozen_count(model, stage.freeze_patterns)}/{total}",
            ",".join(f"{k}x{v:g}" for k, v in stage.lr_multipliers.items()) or "-",
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
    if fans_out(cfg.executor):
        lines.append(build_executor(cfg.executor).describe())
    return "\n".join(lines)
