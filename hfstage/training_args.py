"""A recipe in ``TrainingArguments`` terms: which Trainer names hfstage models under its own keys, and the
``training_args:`` mapping that passes every other field through.

Names and types are checked when the config loads (``check_training_args``: unknown names get the nearest
one, names hfstage models get hfstage's key). Values that only transformers can judge (an optimizer whose
package is missing, a scheduler's keyword arguments, a combination ``TrainingArguments`` refuses) are checked
by building every stage's arguments before anything is trained (``preflight.check_stage_arguments``, with
``StageTrainingArguments.for_stage``). This module stays below the engine: the config imports it.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib.util
import typing
from typing import Any, Literal, Union

from hfstage.arguments import closest
from hfstage.errors import ConfigError

# TrainingArguments field -> (the hfstage key that sets it, "stage" or "run" level, a note for the docs)
MODELLED: dict[str, tuple[str, str, str]] = {
    "num_train_epochs": ("epochs", "stage", ""),
    "learning_rate": ("lr", "stage", "`encoder_lr`/`head_lr`/`lr_multipliers` for parameter groups"),
    "lr_scheduler_type": ("scheduler", "stage", "every transformers `SchedulerType`"),
    "lr_scheduler_kwargs": ("scheduler_kwargs", "stage", ""),
    "warmup_steps": ("warmup_ratio", "stage", "a fraction of the stage's steps"),
    "weight_decay": ("weight_decay", "stage", ""),
    "optim": ("optim", "stage", ""),
    "per_device_train_batch_size": ("batch_size", "stage", ""),
    "per_device_eval_batch_size": ("eval_batch_size", "stage", ""),
    "gradient_accumulation_steps": ("gradient_accumulation_steps", "stage", ""),
    "max_grad_norm": ("max_grad_norm", "stage", ""),
    "label_smoothing_factor": ("label_smoothing", "stage", ""),
    "bf16": ("mixed_precision", "stage", "`mixed_precision: bf16`"),
    "fp16": ("mixed_precision", "stage", "`mixed_precision: fp16`"),
    "train_sampling_strategy": ("group_by_length", "stage", "`group_by_length: true`"),
    "eval_strategy": ("eval_steps", "stage", "every epoch, or every `eval_steps` steps"),
    "save_strategy": ("eval_steps", "stage", "a checkpoint at every evaluation"),
    "eval_steps": ("eval_steps", "stage", ""),
    "save_steps": ("eval_steps", "stage", ""),
    "logging_nan_inf_filter": ("on_nonfinite", "stage", "`stop` or `skip` a non-finite loss"),
    "seed": ("seed", "run", "stage k trains with seed + k - 1"),
    "output_dir": ("output_dir", "run", "the run folder; Trainer checkpoints go to `<output_dir>/checkpoints/`"),
    "run_name": ("output_dir", "run", "a run is named after its folder"),
    "report_to": ("report_to", "run", "one tracker run per curriculum"),
    "project": ("project", "run", "the tracker project"),
    "logging_steps": ("logging_steps", "run", ""),
    "metric_for_best_model": ("metric_for_best_model", "run", ""),
    "greater_is_better": ("metric_for_best_model", "run", "follows from the metric (lower is better for losses)"),
    "load_best_model_at_end": ("improvement_threshold", "run", "every stage ends on its best checkpoint; "
                               "`improvement_threshold` decides which stages are kept"),
    "push_to_hub": ("push_to_hub", "run", "every stage as it finishes"),
    "hub_model_id": ("hub_repo_id", "run", ""),
    "hub_private_repo": ("hub_private", "run", ""),
    "dataloader_num_workers": ("data.num_workers", "run", ""),
}

# TrainingArguments fields hfstage sets itself, with why (a recipe cannot set them)
RESERVED: dict[str, str] = {
    "use_cpu": "hfstage uses the accelerator accelerate sees; hide GPUs (CUDA_VISIBLE_DEVICES=) to train on the CPU",
    "label_names": "the task names its label columns",
    "remove_unused_columns": "the task's collator picks the columns",
    "save_total_limit": "hfstage keeps one Trainer checkpoint per stage to resume from, and every finished stage",
    "save_only_model": "resuming needs the optimizer state in each checkpoint",
    "resume_from_checkpoint": "rerun the same command: an interrupted stage resumes from its last checkpoint",
    "do_train": "a script flag the Trainer ignores: every stage trains and evaluates, and tests when data.test_file is set",
    "do_eval": "a script flag the Trainer ignores: every stage trains and evaluates, and tests when data.test_file is set",
    "do_predict": "a script flag the Trainer ignores: every stage trains and evaluates, and tests when data.test_file is set",
    "local_rank": "set by the launcher (accelerate launch, torchrun)",
    "save_on_each_node": "the run folder is written once, by the global main process, and every process reads the "
                         "previous stage and the resume checkpoint from it: output_dir must be on a filesystem every "
                         "node mounts (see docs/launching.md)",
    "hub_token": "the token comes from HF_TOKEN or `hf auth login`",
    "hub_strategy": "with push_to_hub, hfstage pushes each finished stage itself",
    "hub_always_push": "with push_to_hub, hfstage pushes each finished stage itself",
    "hub_revision": "with push_to_hub, hfstage pushes each finished stage itself (`hfstage push --revision` for a branch)",
    "trackio_space_id": "hfstage's trackio runs are local (TRACKIO_DIR); publish them with trackio's own tools",
    "trackio_bucket_id": "hfstage's trackio runs are local (TRACKIO_DIR); publish them with trackio's own tools",
    "trackio_static_space_id": "hfstage's trackio runs are local (TRACKIO_DIR); publish them with trackio's own tools",
}

# `report_to` values: the trackers hfstage logs a whole curriculum to (tracking.py), and the module each needs
TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "trackio": "trackio", "wandb": "wandb"}


@functools.cache
def trainer_fields() -> dict[str, Any]:
    """Every ``TrainingArguments`` init field -> its type annotation."""
    from transformers import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainingArguments) if f.init}


def hint_for(key: str, level: str) -> str:
    """A hint for a ``TrainingArguments`` name used as a stage (``level="stage"``) or run key; '' for others."""
    if key in MODELLED:
        own, own_level, _ = MODELLED[key]
        shown = f"defaults.{own}" if own_level == "stage" and level == "run" else own
        if own_level == "run" and level == "stage":
            return f" (did you mean `{own}` (TrainingArguments' {key})? it is set for the whole run, at the top level)"
        return f" (did you mean `{shown}` (TrainingArguments' {key})?)"
    if key in RESERVED:
        return f" (TrainingArguments' {key} is set by hfstage: {RESERVED[key]})"
    if key in trainer_fields():
        where = "defaults.training_args" if level == "run" else "training_args"
        return f" (a TrainingArguments field: set it under `{where}`, e.g. {where}.{key}=...)"
    return ""


def check_training_args(value: Any, where: str) -> dict[str, Any]:
    """The ``training_args`` mapping, checked against ``TrainingArguments``' fields and their types."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of TrainingArguments fields, got {value!r}")
    fields = trainer_fields()
    out = {}
    for key, item in value.items():
        key_where = f"{where}.{key}"
        if key in MODELLED:
            own = MODELLED[key][0]
            level = "" if MODELLED[key][1] == "stage" else " (a run field, at the top level)"
            raise ConfigError(f"{key_where}: hfstage sets {key} from its own key: use `{own}`{level}")
        if key in RESERVED:
            raise ConfigError(f"{key_where}: set by hfstage ({RESERVED[key]})")
        if key not in fields:
            raise ConfigError(f"{key_where}: not a TrainingArguments field{closest(key, fields)}")
        out[key] = _typed(item, fields[key], key_where)
    return out


def _typed(value: Any, tp, where: str) -> Any:
    """``value`` if it fits annotation ``tp`` (numbers from numeric strings, enums from their names), else an error."""
    options = list(typing.get_args(tp)) if typing.get_origin(tp) is Union or type(tp).__name__ == "UnionType" else [tp]
    if value is None:
        if type(None) in options or tp is Any:
            return None
        raise ConfigError(f"{where}: null is not allowed")
    for option in options:
        origin = typing.get_origin(option) or option
        if option is Any:
            return value
        if origin is Literal:
            if value in typing.get_args(option):
                return value
        elif isinstance(origin, type) and issubclass(origin, enum.Enum):
            if isinstance(value, str):
                choices = [m.value for m in origin]
                if value in choices:
                    return value
                raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
        elif origin is bool:
            if isinstance(value, bool):
                return value
        elif origin in (int, float):
            if isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and (origin is float or float(value).is_integer()):
                return origin(value)
            if isinstance(value, str):
                try:
                    number = float(value)
                except ValueError:
                    continue
                if origin is float or number.is_integer():
                    return origin(number)
        elif origin is str:
            if isinstance(value, str):
                return value
        elif origin is list:
            if isinstance(value, list):
                return value
        elif origin is dict:
            if isinstance(value, dict):
                return value
    kinds = sorted({_kind(o) for o in options if o is not type(None)})
    raise ConfigError(f"{where}: expected {' or '.join(kinds)}, got {value!r}")


def _kind(tp) -> str:
    origin = typing.get_origin(tp) or tp
    if origin is Literal:
        return " or ".join(repr(v) for v in typing.get_args(tp))
    if isinstance(origin, type) and issubclass(origin, enum.Enum):
        return "a name"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping"}.get(origin, getattr(origin, "__name__", str(origin)))


def check_report_to(value: list[str], where: str) -> list[str]:
    """``report_to``: trackers hfstage can log a curriculum to, each installed; ``none`` alone."""
    wanted = [v for v in value if v != "none"]
    if "none" in value and wanted:
        raise ConfigError(f"{where}: 'none' cannot be combined with {', '.join(wanted)}")
    for name in wanted:
        if name not in TRACKERS:
            raise ConfigError(f"{where}: {name!r} is not a tracker hfstage logs to{closest(name, TRACKERS)}; choose from "
                              f"{', '.join(TRACKERS)} or none")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ConfigError(f"{where}: {name} is not installed; pip install 'hfstage[{name}]' (or all trackers: "
                              "'hfstage[trackers]'), or remove it from report_to")
    if len(set(wanted)) != len(wanted):
        raise ConfigError(f"{where}: a tracker is named twice")
    return value


def scheduler_names() -> list[str]:
    from transformers.trainer_utils import SchedulerType

    return [s.value for s in SchedulerType]


def optimizer_names() -> list[str]:
    from transformers.training_args import OptimizerNames

    return [o.value for o in OptimizerNames]


# --------------------------------------------------------------------------------------------------
# Docs


def trainer_table() -> str:
    """'Coming from HF Trainer': each TrainingArguments name hfstage models, and where it goes in a recipe."""
    rows = ["| TrainingArguments | in a recipe | note |", "|---|---|---|"]
    for name, (own, level, note) in MODELLED.items():
        place = (f"`{own}` (each stage, or `defaults`)" if level == "stage" else
                 f"`{own}` (under `data:`)" if own.startswith("data.") else f"`{own}` (top level)")
        rows.append(f"| `{name}` | {place} | {note} |")
    for name, why in RESERVED.items():
        rows.append(f"| `{name}` | set by hfstage | {why} |")
    rows.append("| any other field (`adam_beta2`, `torch_compile`, `dataloader_persistent_workers`, `ddp_timeout`, ...) "
                "| `training_args: {NAME: VALUE}` (each stage, or `defaults`) | checked against TrainingArguments |")
    return "\n".join(rows)
