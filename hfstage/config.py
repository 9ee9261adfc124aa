"""Run and stage configuration: dataclasses loaded from YAML, with ``key=value`` overrides.

A recipe is a YAML file whose top-level keys are the fields of :class:`RunConfig`. Stages are a list
under ``stages:``; any stage field left out takes its value from the ``defaults:`` block, and then
from the :class:`StageConfig` default. Overrides use dots for nesting and address a stage by its
number (counted from 1, like the run folders ``stage_1_<name>``) or by its name::

    defaults.lr=3e-4  stages.2.lr=1e-4  stages.regularization.label_smoothing=0.2

Unknown keys, wrong types and impossible values raise one :class:`ConfigError` naming the file, the
key and the nearest valid key.

Pluggable parts are mappings checked against their constructors: ``loss: focal`` or
``loss: {type: focal, gamma: 3}`` (the loss class's arguments), ``teacher: runs/big`` or
``teacher: {checkpoint: runs/big, alpha: 0.7}`` (the distillation loss's). An override can reach into
either form: ``stages.5.loss.gamma=3``.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hfstage.arguments import (
    AT_LEAST_ONE,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    closest,
    coerce,
)
from hfstage.errors import ConfigError
from hfstage.executors.base import LOCAL, executor_spec, fans_out
from hfstage.stage_search.settings import search_block
from hfstage.training_args import (
    check_report_to,
    check_training_args,
    hint_for,
    optimizer_names,
    scheduler_names,
)

STAGE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
PRECISIONS = ("no", "bf16", "fp16")


def _f(default=dataclasses.MISSING, help: str = "", check=None, factory=None, parse=None):
    """A dataclass field with a help text (for the reference) and an optional value check.

    ``check`` is ``(predicate, "must be ...")``; the predicate gets the coerced value. ``parse(value, where)``
    replaces the type coercion for fields whose value is checked elsewhere (a loss against its constructor).
    """
    metadata = {"help": help, "check": check, "parse": parse}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


_POSITIVE, _NON_NEGATIVE, _FRACTION, _AT_LEAST_ONE = POSITIVE, NON_NEGATIVE, FRACTION, AT_LEAST_ONE


# Run fields that became keys of the executor mapping: name -> its key there
EXECUTOR_KEYS = {"ray_address": "address", "resources": "resources"}


def augmentation_spec(value: Any, where: str) -> dict[str, float]:
    """Augmentation name -> strength; ``true``/``false`` stand for 1 and 0 (``{match_target: true, hflip: true}``)."""
    if isinstance(value, dict):
        value = {k: float(v) if isinstance(v, bool) else v for k, v in value.items()}
    return coerce(value, dict[str, float], where)


def teacher_spec(value: Any, where: str) -> dict[str, Any] | None:
    """``teacher: PATH`` or ``{checkpoint: PATH, temperature: T, alpha: a}`` -> the mapping with defaults filled
    (the distillation loss's constructor arguments)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = {"checkpoint": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a checkpoint (stage or run folder, hf:// reference) or a mapping with "
                          f"'checkpoint', got {value!r}")
    if not isinstance(value.get("checkpoint"), str) or not value["checkpoint"]:
        raise ConfigError(f"{where}.checkpoint: missing; name the teacher's stage or run folder (or hf:// reference)")
    args = {k: v for k, v in value.items() if k != "checkpoint"}
    losses = _losses()
    return {"checkpoint": value["checkpoint"], **losses.base.loss_arguments(losses.DistillationLoss, args, where,
                                                                            "teacher (distillation)", ("hard_loss",))}


def _losses():
    """The losses package, imported when a loss mapping is checked (it imports torch; reading a saved run's
    record, ``hfstage runs list``, does not need it)."""
    import hfstage.losses

    return hfstage.losses


# Stage fields that became arguments of a loss (or of distillation): name -> (where it lives now, example)
MOVED_FIELDS = {
    "focal_alpha": ("loss.alpha", "loss: {type: focal, alpha: V} (speech: loss: {type: ctc_mispronunciation, focal_alpha: V})"),
    "focal_gamma": ("loss.gamma", "loss: {type: focal, gamma: V} (speech: loss: {type: ctc_mispronunciation, focal_gamma: V})"),
    "arcface_margin": ("loss.margin", "loss: {type: arcface, margin: V}"),
    "ctc_weight": ("loss.ctc_weight", "loss: {type: ctc_mispronunciation, ctc_weight: V}"),
    "error_weight": ("loss.error_weight", "loss: {type: ctc_mispronunciation, error_weight: V}"),
    "error_loss": ("loss.error_loss", "loss: {type: ctc_mispronunciation, error_loss: V}"),
    "error_pos_weight": ("loss.pos_weight", "loss: {type: ctc_mispronunciation, pos_weight: V}"),
    "distill_temperature": ("teacher.temperature", "teacher: {checkpoint: PATH, temperature: V}"),
    "distill_alpha": ("teacher.alpha", "teacher: {checkpoint: PATH, alpha: V}"),
}
# where each moved field's value goes when a run saved by an older hfstage is read: loss type -> {old: new}
_MOVED_BY_LOSS = {
    "focal": {"focal_alpha": "alpha", "focal_gamma": "gamma"},
    "arcface": {"arcface_margin": "margin"},
    "ctc_mispronunciation": {"ctc_weight": "ctc_weight", "error_weight": "error_weight", "error_loss": "error_loss",
                             "error_pos_weight": "pos_weight", "focal_alpha": "focal_alpha", "focal_gamma": "focal_gamma"},
}
# mapping-valued stage fields, with the key their one-word shorthand stands for
_SHORTHANDS = {"loss": "type", "teacher": "checkpoint"}


@dataclass
class StageConfig:
    """One stage of a curriculum: a full `Trainer` run with its own optimisation settings."""

    name: str = _f("stage", "Stage name; the stage folder is `stage_<N>_<name>`. Letters, digits, `_`, `-`.")
    description: str = _f("", "Free text saved in `stage.json` as `stage_description`.")
    kind: str = _f(
        "train", "`train` (gradient steps) or `adabn`: no gradient steps, the model's BatchNorm statistics re-estimated "
        "on the unlabelled target images of `data.unlabeled_file` (images; weights untouched).",
        (lambda v: v in ("train", "adabn"), "must be train or adabn"),
    )
    epochs: float = _f(1.0, "Training epochs of this stage (fractions allowed).", _POSITIVE)
    lr: float = _f(1e-3, "Peak learning rate.", _POSITIVE)
    scheduler: str = _f(
        "cosine",
        "Learning-rate schedule: any transformers `SchedulerType` (`linear`, `cosine`, `cosine_with_restarts`, "
        "`polynomial`, `constant`, `constant_with_warmup`, `inverse_sqrt`, `reduce_lr_on_plateau`, "
        "`cosine_with_min_lr`, `warmup_stable_decay`, ...).",
        (lambda v: v in scheduler_names(),
         lambda: "is not a transformers SchedulerType; choose one of " + ", ".join(scheduler_names())),
    )
    scheduler_kwargs: dict[str, Any] = _f(
        help="The scheduler's own arguments (TrainingArguments' `lr_scheduler_kwargs`), e.g. `{num_decay_steps: 100}` "
        "for `warmup_stable_decay` or `{min_lr_rate: 0.1}` for `cosine_with_min_lr`; checked before training.",
        factory=dict,
    )
    warmup_ratio: float = _f(0.0, "Fraction of the stage's steps used for linear warm-up.", _FRACTION)
    weight_decay: float = _f(0.0, "AdamW weight decay (not applied to biases and norm weights).", _NON_NEGATIVE)
    optim: str = _f("adamw_torch", "Optimizer: any `TrainingArguments.optim` name (`adamw_torch`, `adamw_torch_fused`, "
                    "`sgd`, `adafactor`, ...); one whose package is missing is refused before training.",
                    (lambda v: v in optimizer_names(),
                     lambda: "is not a TrainingArguments optimizer; choose one of " + ", ".join(optimizer_names())))
    batch_size: int = _f(128, "Training batch size per device (the global batch grows with the process count).", _AT_LEAST_ONE)
    eval_batch_size: int = _f(512, "Evaluation batch size per device.", _AT_LEAST_ONE)
    group_by_length: bool = _f(
        False, "Batch samples of similar length together (transformers' `LengthGroupedSampler`): less padding for "
        "speech clips and sequences; other data kinds refuse it."
    )
    gradient_accumulation_steps: int = _f(1, "Batches accumulated before each optimizer step.", _AT_LEAST_ONE)
    max_grad_norm: float = _f(1.0, "Gradient clipping norm; 0 disables clipping.", _NON_NEGATIVE)
    on_nonfinite: str = _f(
        "stop", "A NaN/Inf training loss: `stop` the stage (earlier stages stay intact; `run.json` says why) or "
        "`skip` that batch (no update from it; logged and counted as `skipped_steps` in `stage.json`; one process only).",
        (lambda v: v in ("stop", "skip"), "must be stop or skip"),
    )
    loss: dict[str, Any] = _f(
        help="Training loss: a registered name (`cross_entropy`, `focal`, `arcface` (needs `model.head: cosine`), "
        "`ctc_mispronunciation`) or a mapping `{type: focal, gamma: 2.0}` whose other keys are the loss's arguments "
        "(see Losses below); saved with every argument filled in.",
        factory=lambda: {"type": "cross_entropy"}, parse=lambda v, where: _losses().loss_spec(v, where),
    )
    label_smoothing: float = _f(0.0, "Label smoothing of the training loss (every loss that takes it).", _FRACTION)
    augmentation: dict[str, float] = _f(
        help="Training-time augmentations of the task, name -> strength (e.g. `{shift: 0.1, rotate: 10}`; `true` = 1).",
        factory=dict, parse=augmentation_spec,
    )
    class_augmentation: dict[str, float] = _f(
        help="Images: class name -> multiplier of this stage's augmentation strengths for that class's images "
        "(0 = none; probabilities and magnitudes are capped at their limits; mixup/cutmix stay batch-wide).",
        factory=dict,
    )
    freeze_patterns: list[str] = _f(
        help="Glob patterns of parameter names to freeze (e.g. `encoder.*`); a pattern starting with `!` keeps "
        "what it matches trainable (`[backbone.*, '!backbone.fc.*']`: head only). Frozen modules stay in eval mode.",
        factory=list,
    )
    freeze_batchnorm: bool = _f(
        False, "BatchNorm layers stay in eval mode: their running statistics (e.g. those a `kind: adabn` stage "
        "estimated on target images) are kept, their scale and shift still train."
    )
    train_on_eval: bool = _f(
        False, "Train this stage on the training split plus the eval split: a final refit on all labelled data once "
        "earlier stages have chosen the settings (scikit-learn's `refit`, AutoGluon's `refit_full`). Its eval metrics "
        "are then in-sample (`stage.json`: `trained_on_eval`), an estimator does not early-stop on them (LightGBM "
        "keeps the boosting rounds of the stage it starts from), speech keeps that stage's error threshold, and "
        "`hfstage stack` refuses its predictions of the eval split. Not with `folds` (the eval split is the held-out "
        "fold) or `kind: adabn`."
    )
    lr_multipliers: dict[str, float] = _f(
        help="Glob pattern of parameter names -> learning-rate multiplier (first match wins).",
        factory=dict,
    )
    encoder_lr: float | None = _f(
        None, "Learning rate of the model's encoder (`encoder.*`; timm: `backbone.*`); the rest trains at "
        "`head_lr` (or `lr`). Becomes the first entry of `lr_multipliers`.", _POSITIVE,
    )
    head_lr: float | None = _f(None, "Learning rate of everything but the encoder (default: `lr`).", _POSITIVE)
    dropout: float | None = _f(None, "If set, the p of every dropout layer of the model for this stage.")
    teacher: dict[str, Any] | None = _f(
        None, "Distil from a saved stage or run (its best stage), local or `hf://`: `teacher: PATH` or "
        "`{checkpoint: PATH, temperature: 4.0, alpha: 0.5}`; the loss becomes (1 - alpha) * stage loss + "
        "alpha * T^2 * KL(teacher/T || model/T).", parse=teacher_spec,
    )
    pseudo_labels: bool = _f(
        False,
        "Images: before this stage, predict `data.unlabeled_file` with the model the stage starts from and add the "
        "images whose top probability is >= `pseudo_threshold` to its training data, labelled with that class.",
    )
    pseudo_threshold: float = _f(
        0.95, "Confidence a pseudo-label needs (see `pseudo_labels`).", (lambda v: 0 < v <= 1, "must be in (0, 1]")
    )
    init_from: str | None = _f(
        None, "Start from this earlier stage's weights (its number or name) instead of the latest kept stage."
    )
    early_stopping_patience: int | None = _f(
        None, "Stop the stage after this many evaluations without improvement of the tracked metric."
    )
    eval_steps: int | None = _f(
        None, "Evaluate and checkpoint every N optimizer steps instead of every epoch."
    )
    mixed_precision: str | None = _f(
        None,
        "`no`, `bf16` or `fp16` for this stage; unset = what the accelerate config says.",
        (lambda v: v in PRECISIONS, "must be one of " + ", ".join(PRECISIONS)),
    )
    training_args: dict[str, Any] = _f(
        help="Any other `TrainingArguments` field, passed to the stage's Trainer: `{adam_beta2: 0.98, torch_compile: "
        "true, ddp_timeout: 600}`. Checked against TrainingArguments' fields and types; a field hfstage sets from its "
        "own key is refused with that key (see 'Coming from HF Trainer'). A stage's mapping adds to the defaults' one.",
        factory=dict, parse=check_training_args,
    )


@dataclass
class DataConfig:
    """Where the task's data lives and how much of it to use."""

    path: str = _f("data/mnist_pairs", "Folder of the task's own files; or a `datasets` source: a `save_to_disk` "
                   "folder, a folder of parquet/arrow/csv/json files, or `hf://datasets/OWNER/NAME[@REV]`.")
    config: str | None = _f(None, "The configuration of a `datasets` source (`load_dataset(path, config)`).")
    columns: dict[str, str] = _f(
        help="Task field -> column of the data (a `datasets` source, or the keys of hfstage's own files: npz keys, "
        "metadata.jsonl/csv keys, the image CSV's header). Pairs: `image_a`/`image_b` or `pair`, `label`; sequences: "
        "`features`, `lengths`, `label`; images: `image`, `label`; speech: `audio`, `canonical`, `spoken`, `labels`, "
        "`split`. The forms each field accepts: docs/tasks/. "
        "e.g. `{label: is_same}`.", factory=dict,
    )
    train_file: str = _f("train.npz", "Training split: a file under `path`, or a `datasets` split (default there: `train`).")
    eval_file: str = _f("val.npz", "Validation split used for stage metrics and keep/skip decisions (`datasets`: "
                        "`validation`).")
    test_file: str | None = _f("test_public.npz", "Held-out test split reported at the end; null to skip "
                                  "(`datasets`: `test`, skipped when the source has none).")
    max_train_samples: int | None = _f(None, "Use only the first N training samples.")
    max_eval_samples: int | None = _f(None, "Use only the first N validation and test samples.")
    num_workers: int = _f(0, "DataLoader worker processes.", _NON_NEGATIVE)
    unlabeled_file: str | None = _f(
        None, "Images: folder (relative to `path`) of unlabelled (target-domain) images for `pseudo_labels`, "
        "`augmentation.match_target` and `kind: adabn` stages."
    )
    skip_bad_images: bool = _f(
        False, "Images: leave unreadable image files out (counted in the log) instead of stopping with an error."
    )


@dataclass
class RunConfig:
    """A whole curriculum run: data, model, and the ordered list of stages."""

    task: str = _f(
        "pair_classification",
        "Task kind (data format + metrics): `pair_classification`, `sequence_classification` or "
        "`image_classification`.",
    )
    output_dir: str = _f("runs/quickstart", "Run folder; rerunning the same command resumes it.")
    seed: int = _f(42, "Random seed for model initialisation, data order and augmentation.")
    seeds: list[int] = _f(
        help="Train one run per seed, each in `<output_dir>/seed_<s>` (replaces `seed`), and report mean +- std.",
        factory=list,
    )
    folds: int = _f(
        0,
        "k-fold training: one curriculum per stratified fold of the training split in `<output_dir>/fold_<k>` "
        "(k from 0; the held-out fold is its eval split), then out-of-fold probabilities (`oof.npy`, `oof_ids.npy`) "
        "and CV mean +- std (`cv.json`). 0 = no folds.",
        (lambda v: v == 0 or v >= 2, "must be 0 (no folds) or >= 2"),
    )
    fold: int | None = _f(None, "With `folds`: train only this fold (from 0), e.g. to spread folds over machines.")
    executor: dict[str, Any] = _f(
        help="Where the independent units of a job train (the folds of `folds`, the seeds of `seeds`, the bases of a "
        "stacking recipe): `{type: local}` (the default), one after another in this process, or `{type: ray, address: "
        "auto, resources: {num_cpus: 2, num_gpus: 0.25}}`, side by side as Ray tasks (`pip install 'hfstage[ray]'`; "
        "`address`: the cluster to join, unset = a local Ray; `resources`: what each unit asks for, default one CPU). "
        "The other keys are checked against the executor's constructor; `hfstage train --executor NAME --address A`. "
        "Same run folders either way.",
        factory=lambda: {"type": "local"}, parse=lambda v, where: executor_spec(v, where),
    )
    search: dict[str, Any] = _f(
        help="Settings of `hfstage search` (docs/search.md): `trials`, `space` (KEY: DIST), `metric`, `pruner`, "
        "`timeout`, `out`, `from_run`, `through`, `storage`, `trials_per_stage`, `executor`; its flags override them. "
        "`hfstage train` does not read it.",
        factory=dict, parse=lambda v, where: search_block(v, where),
    )
    data: DataConfig = _f(help="Data settings (see the `data` table).", factory=DataConfig)
    model: dict[str, Any] = _f(
        help="Model: `type` (a registered model) plus that model's config arguments.",
        factory=lambda: {"type": "pair_cnn"},
    )
    improvement_threshold: float = _f(
        0.0,
        "A stage is kept when it improves the tracked metric over the best kept stage by at least this; "
        "-1 (any negative value) keeps every stage.",
    )
    metric_for_best_model: str = _f(
        "eval_loss", "Tracked metric for keep/skip, early stopping and the best stage (lower is better for losses)."
    )
    quick_test: bool = _f(False, "Run every stage for one epoch on a small subset of the data.")
    quick_test_samples: int = _f(2000, "Training samples used when `quick_test` is on (evaluation uses half).", _AT_LEAST_ONE)
    report_to: list[str] = _f(
        help="Trackers that log the whole curriculum as one run, on one global step: `tensorboard` (in "
        "`<output_dir>/logs`), `mlflow` (`MLFLOW_TRACKING_URI`, default `./mlruns`), `trackio` (local), `wandb` "
        "(`WANDB_MODE=offline` works); or `none`. Each but tensorboard is an extra: `pip install 'hfstage[trackers]'`.",
        factory=lambda: ["tensorboard"], parse=lambda v, where: check_report_to(coerce(v, list[str], where), where),
    )
    project: str = _f("hfstage", "Tracker project the run is logged under (trackio project, MLflow experiment, "
                      "W&B project); the tracker run is named after the run folder.")
    logging_steps: int = _f(50, "Log the training loss every N steps.", _AT_LEAST_ONE)
    test_every_stage: bool = _f(
        True, "Evaluate the test split (`data.test_file`) after every stage (`test_metrics` in `stage.json`); false "
        "leaves the test split to `hfstage evaluate` (`hfstage search` trials do: they never look at it).")
    push_to_hub: bool = _f(
        False,
        "Push each stage to the Hub (`hub_repo_id`) in the background as it finishes, then the whole run "
        "(best model at the root, model card); the token comes from `HF_TOKEN` or `hf auth login`.",
    )
    hub_repo_id: str | None = _f(
        None, "Hub repository (OWNER/NAME) for `push_to_hub`; with `seeds`, each seed pushes to `NAME-seed-<s>`."
    )
    hub_private: bool = _f(False, "Create the `hub_repo_id` repository as private.")
    license: str | None = _f(None, "License of the trained models, written into every model card (a Hub license id such "
                             "as `apache-2.0` or `mit`); unset: none is claimed.")
    defaults: dict[str, Any] = _f(help="Stage fields shared by every stage unless a stage sets them.", factory=dict)
    stages: list[StageConfig] = _f(help="The curriculum, in order (at least one stage).", factory=list)

    @property
    def greater_is_better(self) -> bool:
        from hfstage.reporting import lower_is_better

        return not lower_is_better(self.metric_for_best_model)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# Type coercion and validation


def _build(cls, raw: Any, where: str):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and bad values."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        key_where = f"{where} {key}" if where.endswith(":") else f"{where}.{key}" if where else str(key)
        if key not in fields:
            if cls is StageConfig and key in MOVED_FIELDS:
                new, example = MOVED_FIELDS[key]
                raise ConfigError(f"{key_where}: loss parameters belong to the loss now: use {new}, i.e. "
                                  f"{example.replace('V', yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip())}")
            if cls is RunConfig and key in EXECUTOR_KEYS:
                raise ConfigError(f"{key_where}: belongs to the executor now: executor: {{type: ..., "
                                  f"{EXECUTOR_KEYS[key]}: {yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}}}")
            level = {StageConfig: "stage", RunConfig: "run"}.get(cls)
            hint = hint_for(str(key), level) if level else ""
            raise ConfigError(f"{key_where}: unknown key{hint or closest(key, fields)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, key_where)
            continue
        parse = fields[key].metadata.get("parse")
        coerced = parse(value, key_where) if parse is not None else coerce(value, tp, key_where)
        check = fields[key].metadata.get("check")
        if check is not None and coerced is not None and not check[0](coerced):
            raise ConfigError(f"{key_where}: {coerced!r} {check[1]() if callable(check[1]) else check[1]}")
        kwargs[key] = coerced
    return cls(**kwargs)


def _check_stage_names(stages: list[StageConfig], where: str) -> None:
    seen = set()
    for i, stage in enumerate(stages, 1):
        if not STAGE_NAME_RE.match(stage.name):
            raise ConfigError(
                f"{where}.stages.{i}.name: {stage.name!r} must be letters, digits, '_' or '-' (it names a folder)"
            )
        if stage.name in seen:
            raise ConfigError(f"{where}.stages.{i}.name: stage name {stage.name!r} is used twice")
        if stage.init_from is not None:
            earlier = [s.name for s in stages[: i - 1]]
            ref = stage.init_from
            if stage_number(earlier, ref) is None:
                raise ConfigError(
                    f"{where}.stages.{i}.init_from: {ref!r} is not an earlier stage (give its number or name: "
                    f"{', '.join(earlier) or 'there is none'})"
                )
        seen.add(stage.name)
        if stage.label_smoothing and not _losses().base.takes_label_smoothing(stage.loss["type"]):
            raise ConfigError(f"{where}.stages.{i}.label_smoothing: loss '{stage.loss['type']}' takes no label "
                              "smoothing; leave it at 0")


def stage_number(names: list[str], token: str) -> int | None:
    """The number (from 1) of the stage ``token`` names among ``names``: its number or its name; None if none."""
    token = str(token)
    if token.isdigit():
        return int(token) if 1 <= int(token) <= len(names) else None
    return names.index(token) + 1 if token in names else None


def _with_shorthands(stage: dict[str, Any]) -> dict[str, Any]:
    """``loss: focal`` -> ``loss: {type: focal}`` (and ``teacher: PATH`` likewise), so mappings can be merged."""
    return {k: ({_SHORTHANDS[k]: v} if k in _SHORTHANDS and isinstance(v, str) else v) for k, v in stage.items()}


def _merge_stage(defaults: dict[str, Any], stage: dict[str, Any]) -> dict[str, Any]:
    """A stage's fields over the defaults block; a stage's ``loss``/``teacher`` mapping is completed from the
    defaults' one when it does not name another ``type``/``checkpoint`` (``defaults: {loss: focal}`` and a stage
    ``loss: {gamma: 3}`` give ``{type: focal, gamma: 3}``)."""
    defaults, stage = _with_shorthands(defaults), _with_shorthands(stage)
    merged = {**defaults, **stage}
    for key, head in _SHORTHANDS.items():
        base, own = defaults.get(key), stage.get(key)
        if isinstance(base, dict) and isinstance(own, dict) and own.get(head, base.get(head)) == base.get(head):
            merged[key] = {**base, **own} if key == "teacher" or head in base else own
    if isinstance(defaults.get("training_args"), dict) and isinstance(stage.get("training_args"), dict):
        merged["training_args"] = {**defaults["training_args"], **stage["training_args"]}
    if isinstance(merged.get("loss"), dict) and "type" not in merged["loss"]:
        merged["loss"] = {"type": "cross_entropy", **merged["loss"]}
    return merged


def build_run_config(raw: dict[str, Any], source: str = "<config>") -> RunConfig:
    """Build and validate a RunConfig from a raw mapping (as read from YAML, overrides applied)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of run fields, got {type(raw).__name__}")
    raw = dict(raw)
    if "bases" in raw:
        raise ConfigError(f"{source}: bases: this is a stacking recipe; run it with `hfstage train --config {source}`")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{source}: defaults: expected a mapping of stage fields")
    for bad in ("name", "description"):
        if bad in defaults:
            raise ConfigError(f"{source}: defaults.{bad}: each stage names itself; set it on the stage")
    # Validate the defaults block on its own so an error names `defaults.<key>`, not a stage.
    built_defaults = _build(StageConfig, defaults, f"{source}: defaults")
    raw_stages = raw.get("stages")
    if not raw_stages:
        raise ConfigError(f"{source}: stages: a run needs at least one stage")
    if not isinstance(raw_stages, list):
        raise ConfigError(f"{source}: stages: expected a list of stages")
    stages = []
    for i, stage in enumerate(raw_stages, 1):
        if not isinstance(stage, dict):
            raise ConfigError(f"{source}: stages.{i}: expected a mapping of stage fields, got {stage!r}")
        stages.append(_build(StageConfig, _merge_stage(defaults, stage), f"{source}: stages.{i}"))
    raw["stages"] = []
    cfg = _build(RunConfig, raw, f"{source}:")
    cfg.stages = stages
    cfg.defaults = {k: getattr(built_defaults, k) for k in defaults}  # coerced, as the stages saw them
    _check_stage_names(stages, source + ":")
    if cfg.fold is not None and not 0 <= cfg.fold < cfg.folds:
        raise ConfigError(f"{source}: fold: {cfg.fold} must name one of the {cfg.folds} folds (0 to {cfg.folds - 1})"
                          if cfg.folds else f"{source}: fold: set only together with folds")
    refits = [f"{i} ({s.name})" for i, s in enumerate(stages, 1) if s.train_on_eval]
    if cfg.folds and refits:
        raise ConfigError(f"{source}: stages.{refits[0]}.train_on_eval: with folds: {cfg.folds} the eval split is the "
                          "held-out fold, so training on it would leak into the out-of-fold predictions; set it "
                          "false for a k-fold run (e.g. stages.NAME.train_on_eval=false) or drop that stage")
    kind = cfg.executor["type"]
    if fans_out(cfg.executor) and cfg.fold is not None:
        raise ConfigError(f"{source}: executor: {kind} trains every fold side by side; fold: {cfg.fold} names one (drop "
                          "one of the two)")
    if fans_out(cfg.executor) and not cfg.folds and not cfg.seeds:
        raise ConfigError(f"{source}: executor: {kind} fans out the independent units of a run (the folds of folds: N, "
                          "the seeds of seeds: [...], the bases of a stacking recipe); this recipe is one run")
    if cfg.push_to_hub and not cfg.hub_repo_id:
        raise ConfigError(f"{source}: hub_repo_id: push_to_hub is on but no repository is named (OWNER/NAME)")
    if cfg.hub_repo_id is not None and not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$", cfg.hub_repo_id):
        raise ConfigError(f"{source}: hub_repo_id: {cfg.hub_repo_id!r} is not OWNER/NAME")
    if "type" not in cfg.model:
        raise ConfigError(f"{source}: model.type: missing; name a registered model (e.g. pair_cnn)")
    if cfg.quick_test:
        _apply_quick_test(cfg)
    return cfg


def _apply_quick_test(cfg: RunConfig) -> None:
    """One epoch per stage on a small subset: the whole curriculum in about a minute."""
    for stage in cfg.stages:
        stage.epochs = 1.0
        stage.eval_steps = None
    n = cfg.quick_test_samples
    cfg.data.max_train_samples = min(cfg.data.max_train_samples or n, n)
    cfg.data.max_eval_samples = min(cfg.data.max_eval_samples or n // 2, n // 2)


# --------------------------------------------------------------------------------------------------
# YAML and overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, _, value = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value  # a plain string such as a glob with ':' in it
    return key.split("."), parsed


def _stage_position(stages: list, token: str, where: str) -> int:
    names = [s.get("name") if isinstance(s, dict) else None for s in stages]
    number = stage_number(names, token)
    if number is not None:
        return number - 1
    if token.lstrip("-").isdigit():
        raise ConfigError(
            f"{where}: there is no stage {int(token)}; stages are numbered 1 to {len(stages)} (as in the run folders)"
        )
    raise ConfigError(f"{where}: no stage named {token!r}{closest(token, [n for n in names if n])}")


def apply_override(raw: dict[str, Any], text: str) -> None:
    """Apply one ``key=value`` override to the raw config mapping, in place."""
    path, value = parse_override(text)
    where = f"override {text!r}"
    node: Any = raw
    for depth, token in enumerate(path[:-1]):
        if isinstance(node, list):
            node = node[_stage_position(node, token, where)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {'.'.join(path[:depth])} is not a mapping")
        if token not in node or node[token] is None:
            if token == "stages":
                raise ConfigError(f"{where}: the config has no stages to override")
            node[token] = {}
        if token in _SHORTHANDS and isinstance(node[token], str):  # stages.5.loss.gamma=3 over `loss: focal`
            node[token] = {_SHORTHANDS[token]: node[token]}
        node = node[token]
    last = path[-1]
    if isinstance(node, list):
        node[_stage_position(node, last, where)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"{where}: {'.'.join(path[:-1])} is not a mapping")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning parse errors into a ConfigError with the line number."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{line}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of run fields, got {type(raw).__name__}")
    return raw


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a recipe from YAML, apply ``key=value`` overrides, validate, and return the RunConfig. Every error names
    the file."""
    from hfstage.errors import about_recipe

    with about_recipe(path):
        raw = read_yaml(path)
        for text in overrides:
            apply_override(raw, text)
        return build_run_config(raw, str(path))


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> RunConfig:
    """Rebuild a RunConfig from ``RunConfig.to_dict()`` output (as saved in run.json), upgrading a config saved
    by an older hfstage (see ``upgrade_saved_stage``)."""
    data = upgrade_saved_executor(dict(data))
    data["quick_test"] = False  # already applied to the saved stages and data
    if isinstance(data.get("defaults"), dict):
        data["defaults"] = upgrade_saved_stage(data["defaults"])
    if isinstance(data.get("stages"), list):
        data["stages"] = [upgrade_saved_stage(s) if isinstance(s, dict) else s for s in data["stages"]]
    cfg = build_run_config(data, source)
    return cfg


def upgrade_saved_executor(data: dict[str, Any]) -> dict[str, Any]:
    """A run saved before the executor was a mapping (``executor: ray``, ``ray_address``, ``resources`` at the top),
    in today's form (the keys of an executor that did not take them dropped). Recipes are refused instead."""
    if not isinstance(data.get("executor"), str) and not any(k in data for k in EXECUTOR_KEYS):
        return data
    kind = data.get("executor") if isinstance(data.get("executor"), str) else (data.get("executor") or LOCAL)["type"]
    old = {new: data.pop(key) for key, new in EXECUTOR_KEYS.items() if key in data}
    data["executor"] = {"type": kind, **({k: v for k, v in old.items() if v} if kind != LOCAL["type"] else {})}
    return data


def upgrade_saved_stage(stage: dict[str, Any]) -> dict[str, Any]:
    """A stage config saved before losses owned their parameters (flat ``focal_gamma``, ``distill_alpha`` ...),
    in today's form: the values of its own loss move into the ``loss`` mapping, the distillation ones into
    ``teacher``; the rest had no effect on that stage and are dropped. Recipes are never upgraded silently:
    ``load_config`` refuses the old fields with the new form."""
    old = {k: v for k, v in stage.items() if k in MOVED_FIELDS}
    if not old:
        return stage
    stage = {k: v for k, v in stage.items() if k not in MOVED_FIELDS}
    if isinstance(stage.get("loss"), str):
        moved = _MOVED_BY_LOSS.get(stage["loss"], {})
        stage["loss"] = {"type": stage["loss"], **{new: old[k] for k, new in moved.items() if k in old}}
    if isinstance(stage.get("teacher"), str):
        moved = {"distill_temperature": "temperature", "distill_alpha": "alpha"}
        stage["teacher"] = {"checkpoint": stage["teacher"], **{new: old[k] for k, new in moved.items() if k in old}}
    return stage


def init_stage_index(stages: list[StageConfig], stage: StageConfig) -> int | None:
    """The number (from 1) of the stage ``stage.init_from`` names, or None when it is unset."""
    if stage.init_from is None:
        return None
    return stage_number([s.name for s in stages], stage.init_from)
