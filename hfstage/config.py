"""Run and stage configuration: dataclasses loaded from YAML, with ``key=value`` overrides.

A recipe is a YAML file whose top-level keys are the fields of :class:`RunConfig`. Stages are a list
under ``stages:``; any stage field left out takes its value from the ``defaults:`` block, and then
from the :class:`StageConfig` default. Overrides use dots for nesting and address a stage by its
number (counted from 1, like the run folders ``stage_1_<name>``) or by its name::

    defaults.lr=3e-4  stages.2.lr=1e-4  stages.regularization.label_smoothing=0.2

Unknown keys, wrong types and impossible values raise one :class:`ConfigError` naming the file, the
key and the nearest valid key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from hfstage.errors import ConfigError
from hfstage.registry import closest

STAGE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)
PRECISIONS = ("no", "bf16", "fp16")


def _f(default=dataclasses.MISSING, help: str = "", check=None, factory=None):
    """A dataclass field with a help text (for the reference) and an optional value check.

    ``check`` is ``(predicate, "must be ...")``; the predicate gets the coerced value.
    """
    metadata = {"help": help, "check": check}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


_POSITIVE = (lambda v: v > 0, "must be > 0")
_NON_NEGATIVE = (lambda v: v >= 0, "must be >= 0")
_FRACTION = (lambda v: 0 <= v < 1, "must be in [0, 1)")
_AT_LEAST_ONE = (lambda v: v >= 1, "must be >= 1")


@dataclass
class StageConfig:
    """One stage of a curriculum: a full `Trainer` run with its own optimisation settings."""

    name: str = _f("stage", "Stage name; the stage folder is `stage_<N>_<name>`. Letters, digits, `_`, `-`.")
    description: str = _f("", "Free text saved in `stage.json` as `stage_description`.")
    epochs: float = _f(1.0, "Training epochs of this stage (fractions allowed).", _POSITIVE)
    lr: float = _f(1e-3, "Peak learning rate.", _POSITIVE)
    scheduler: str = _f(
        "cosine",
        "Learning-rate schedule (a transformers `SchedulerType`): " + ", ".join(SCHEDULERS) + ".",
        (lambda v: v in SCHEDULERS, "must be one of " + ", ".join(SCHEDULERS)),
    )
    warmup_ratio: float = _f(0.0, "Fraction of the stage's steps used for linear warm-up.", _FRACTION)
    weight_decay: float = _f(0.0, "AdamW weight decay (not applied to biases and norm weights).", _NON_NEGATIVE)
    optim: str = _f("adamw_torch", "Optimizer name as accepted by `TrainingArguments.optim`.")
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
    loss: str = _f("cross_entropy", "Training loss from the loss registry: `cross_entropy`, `focal` or `arcface` "
                   "(needs `model.head: cosine`).")
    label_smoothing: float = _f(0.0, "Label smoothing of the training loss.", _FRACTION)
    focal_alpha: float = _f(1.0, "Focal loss weight alpha (a multiplier; 1 = unweighted).", _POSITIVE)
    focal_gamma: float = _f(2.0, "Focal loss focusing exponent gamma (0 = cross-entropy).", _NON_NEGATIVE)
    ctc_weight: float = _f(1.0, "Speech (loss `ctc_mispronunciation`): weight of the CTC phoneme loss.", _NON_NEGATIVE)
    error_weight: float = _f(1.0, "Speech: weight of the mispronunciation-detection loss.", _NON_NEGATIVE)
    error_loss: str = _f(
        "bce", "Speech: mispronunciation loss, `bce` (weighted by `error_pos_weight`) or `focal` (`focal_alpha`, "
        "`focal_gamma`).", (lambda v: v in ("bce", "focal"), "must be bce or focal"),
    )
    error_pos_weight: float = _f(1.0, "Speech: BCE weight of the mispronounced (positive) phonemes.", _POSITIVE)
    arcface_margin: float = _f(
        0.5, "ArcFace additive angular margin m in radians (loss `arcface`).", (lambda v: 0 <= v < 1.5, "must be in [0, 1.5)")
    )
    augmentation: dict[str, float] = _f(
        help="Training-time augmentations of the task, name -> strength (e.g. `{shift: 0.1, rotate: 10}`).",
        factory=dict,
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
    lr_multipliers: dict[str, float] = _f(
        help="Glob pattern of parameter names -> learning-rate multiplier (first match wins).",
        factory=dict,
    )
    encoder_lr: Optional[float] = _f(
        None, "Learning rate of the model's encoder (`encoder.*`; timm: `backbone.*`); the rest trains at "
        "`head_lr` (or `lr`). Becomes the first entry of `lr_multipliers`.", _POSITIVE,
    )
    head_lr: Optional[float] = _f(None, "Learning rate of everything but the encoder (default: `lr`).", _POSITIVE)
    dropout: Optional[float] = _f(None, "If set, the p of every dropout layer of the model for this stage.")
    teacher: Optional[str] = _f(
        None, "Distil from this saved stage or run (its best stage): the training loss becomes hard + soft teacher term."
    )
    distill_temperature: float = _f(4.0, "Softmax temperature T of the distillation term.", _POSITIVE)
    distill_alpha: float = _f(
        0.5, "Weight of the distillation term: (1 - a) * hard loss + a * T^2 * KL.",
        (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    )
    pseudo_labels: bool = _f(
        False,
        "Images: before this stage, predict `data.unlabeled_file` with the model the stage starts from and add the "
        "images whose top probability is >= `pseudo_threshold` to its training data, labelled with that class.",
    )
    pseudo_threshold: float = _f(
        0.95, "Confidence a pseudo-label needs (see `pseudo_labels`).", (lambda v: 0 < v <= 1, "must be in (0, 1]")
    )
    init_from: Optional[str] = _f(
        None, "Start from this earlier stage's weights (its number or name) instead of the latest kept stage."
    )
    early_stopping_patience: Optional[int] = _f(
        None, "Stop the stage after this many evaluations without improvement of the tracked metric."
    )
    eval_steps: Optional[int] = _f(
        None, "Evaluate and checkpoint every N optimizer steps instead of every epoch."
    )
    mixed_precision: Optional[str] = _f(
        None,
        "`no`, `bf16` or `fp16` for this stage; unset = what the accelerate config says.",
        (lambda v: v in PRECISIONS, "must be one of " + ", ".join(PRECISIONS)),
    )


@dataclass
class DataConfig:
    """Where the task's data lives and how much of it to use."""

    path: str = _f("data/mnist_pairs", "Folder holding the split files.")
    train_file: str = _f("train.npz", "Training split, relative to `path`.")
    eval_file: str = _f("val.npz", "Validation split used for stage metrics and keep/skip decisions.")
    test_file: Optional[str] = _f("test_public.npz", "Held-out test split reported at the end; null to skip.")
    max_train_samples: Optional[int] = _f(None, "Use only the first N training samples.")
    max_eval_samples: Optional[int] = _f(None, "Use only the first N validation and test samples.")
    num_workers: int = _f(0, "DataLoader worker processes.", _NON_NEGATIVE)
    unlabeled_file: Optional[str] = _f(
        None, "Images: folder (relative to `path`) of unlabelled images for `pseudo_labels` stages."
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
    fold: Optional[int] = _f(None, "With `folds`: train only this fold (from 0), e.g. to spread folds over machines.")
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
    report_to: list[str] = _f(help="Trainer reporters (`tensorboard`, `none`, ...).", factory=lambda: ["tensorboard"])
    logging_steps: int = _f(50, "Log the training loss every N steps.", _AT_LEAST_ONE)
    push_to_hub: bool = _f(
        False,
        "Push each stage to the Hub (`hub_repo_id`) in the background as it finishes, then the whole run "
        "(best model at the root, model card); the token comes from `HF_TOKEN` or `hf auth login`.",
    )
    hub_repo_id: Optional[str] = _f(
        None, "Hub repository (OWNER/NAME) for `push_to_hub`; with `seeds`, each seed pushes to `NAME-seed-<s>`."
    )
    hub_private: bool = _f(False, "Create the `hub_repo_id` repository as private.")
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


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; convert strings where YAML left numbers unparsed.

    PyYAML reads ``1e-4`` as a string (YAML 1.1 wants a dot), so numeric fields accept numeric strings.
    """
    origin = typing.get_origin(tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        else:
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(out):
            raise ConfigError(f"{where}: {out} is not allowed (a finite number is needed)")
        return out
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and item_tp is str:
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {_coerce(k, key_tp, where): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"unsupported config type {tp}")  # a bug in this module, not user input


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
        key_where = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(f"{key_where}: unknown key{closest(key, fields)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, key_where)
            continue
        coerced = _coerce(value, tp, key_where)
        check = fields[key].metadata.get("check")
        if check is not None and coerced is not None and not check[0](coerced):
            raise ConfigError(f"{key_where}: {coerced!r} {check[1]}")
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
            if not (ref in earlier or (ref.isdigit() and 1 <= int(ref) < i)):
                raise ConfigError(
                    f"{where}.stages.{i}.init_from: {ref!r} is not an earlier stage (give its number or name: "
                    f"{', '.join(earlier) or 'there is none'})"
                )
        seen.add(stage.name)


def build_run_config(raw: dict[str, Any], source: str = "<config>") -> RunConfig:
    """Build and validate a RunConfig from a raw mapping (as read from YAML, overrides applied)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of run fields, got {type(raw).__name__}")
    raw = dict(raw)
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
        stages.append(_build(StageConfig, {**defaults, **stage}, f"{source}: stages.{i}"))
    raw["stages"] = []
    cfg = _build(RunConfig, raw, f"{source}:")
    cfg.stages = stages
    cfg.defaults = {k: getattr(built_defaults, k) for k in defaults}  # coerced, as the stages saw them
    _check_stage_names(stages, source + ":")
    if cfg.fold is not None and not 0 <= cfg.fold < cfg.folds:
        raise ConfigError(f"{source}: fold: {cfg.fold} must name one of the {cfg.folds} folds (0 to {cfg.folds - 1})"
                          if cfg.folds else f"{source}: fold: set only together with folds")
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
    if token.lstrip("-").isdigit():
        number = int(token)
        if not 1 <= number <= len(stages):
            raise ConfigError(
                f"{where}: there is no stage {number}; stages are numbered 1 to {len(stages)} (as in the run folders)"
            )
        return number - 1
    if token in names:
        return names.index(token)
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
    """Load a recipe from YAML, apply ``key=value`` overrides, validate, and return the RunConfig."""
    raw = read_yaml(path)
    for text in overrides:
        apply_override(raw, text)
    return build_run_config(raw, str(path))


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> RunConfig:
    """Rebuild a RunConfig from ``RunConfig.to_dict()`` output (as saved in run.json)."""
    data = dict(data)
    data["quick_test"] = False  # already applied to the saved stages and data
    cfg = build_run_config(data, source)
    return cfg


# --------------------------------------------------------------------------------------------------
# Reference documentation, generated from the dataclasses so it cannot drift


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(value):
            return "(table below)"
    else:
        return "(required)"
    return "`" + yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip() + "`"


def reference_markdown() -> str:
    """The config reference: every field of every config table, its type, default and meaning."""
    parts = []
    for title, cls in (("Run (top level)", RunConfig), ("`data`", DataConfig), ("Stage (`defaults` and each of `stages`)", StageConfig)):
        hints = typing.get_type_hints(cls)
        parts.append(f"### {title}\n\n| field | type | default | meaning |\n|---|---|---|---|")
        for f in dataclasses.fields(cls):
            tp = _type_name(hints[f.name]).replace("|", "or")
            parts.append(f"| `{f.name}` | {tp} | {_default_text(f)} | {f.metadata.get('help', '')} |")
        parts.append("")
    return "\n".join(parts)


def init_stage_index(stages: list[StageConfig], stage: StageConfig) -> int | None:
    """The number (from 1) of the stage ``stage.init_from`` names, or None when it is unset."""
    if stage.init_from is None:
        return None
    if stage.init_from.isdigit():
        return int(stage.init_from)
    return [s.name for s in stages].index(stage.init_from) + 1
