"""The ``Task`` interface: what binds a data kind to its fields, collator, stage checks, metrics and artefacts.

A task declares its **fields** (what each row holds, by kind: see ``hfstage.data.fields``) and the facts other
modules need (pipeline, card tags, headline metrics, label names). Every hook has a documented default here, so the
engine calls hooks and reads attributes without asking whether a task has them (in the spirit of
``transformers.TrainerCallback``). A new task kind is one module in ``hfstage/tasks/`` plus its data module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hfstage.config import DataConfig, StageConfig
from hfstage.errors import ConfigError
from hfstage.registry import Registry


@dataclass(frozen=True)
class Field:
    """One value per row that a task reads: its name (the key of ``data.columns``), its kind (a key of
    ``hfstage.data.fields.FIELD_KINDS``), whether a row may lack it, and its key in hfstage's own files when that
    differs from the name (speech metadata names the audio ``path``)."""

    name: str
    kind: str
    optional: bool = False
    help: str = ""
    own_key: str | None = None
    alternative_to: tuple[str, ...] = ()  # fields this one replaces (pairs: ``pair`` for ``image_a``+``image_b``)


@dataclass(frozen=True)
class CardFacts:
    """What a model card and the Hub know of a task: ``pipeline_tag`` (None when no Hub task fits), the model-index
    task type, a title, and the pipeline ``pipeline(name, model=stage)`` answers to with its example call."""

    pipeline_tag: str | None
    index_type: str
    title: str
    pipeline: str
    example: str = ""


@dataclass
class Splits:
    train: Any
    eval: Any
    test: Any | None
    train_sha256: str | None = None  # what the training data was, when it came from Python objects (hfstage.train)
    eval_sha256: str | None = None  # likewise the eval split (a train_on_eval stage trains on it too)


class Task:
    """Base of every task kind. Subclasses set the class attributes and implement ``load_split``,
    ``load_splits``, ``collator``, ``decide`` and ``compute_metrics``; every other hook has a default."""

    name: str = ""
    fields: tuple[Field, ...] = ()
    card: CardFacts | None = None
    label_names: tuple[str, ...] = ("labels",)  # the batch keys that are targets (the Trainer's label_names)
    headline_metrics: tuple[str, ...] = ("accuracy",)  # the stages table's columns (eval_ and test_ each)
    reads_unlabeled: bool = False  # a folder of unlabelled samples (pseudo-labels, domain adaptation)
    evaluates_own_outputs: bool = False  # ``evaluate_stage`` replaces the class-decision evaluation
    has_lengths: bool = False  # samples have lengths (``group_by_length``)
    source_keys: tuple[str, ...] = ()  # keys of hfstage's own files that data.columns may map besides the fields

    def __init__(self):
        self.columns: dict[str, str] = {}  # data.columns: field -> the source's column

    # --- data ---------------------------------------------------------------------------------------------
    def configure(self, data: DataConfig, model: dict | None = None) -> None:
        """Read the run's ``data.columns`` (checked against the declared fields) and, where decoding depends on
        it, the recipe's model mapping (pairs: channels and image size)."""
        from hfstage.data.fields import check_columns

        self.columns = check_columns(self, data.columns)

    def load_split(self, split, field: str = "data", limit: int | None = None):
        raise NotImplementedError(f"{type(self).__name__}.load_split")

    def load_splits(self, data: DataConfig, given: dict | None = None) -> Splits:
        raise NotImplementedError(f"{type(self).__name__}.load_splits")

    def load_unlabeled(self, path: Path, field: str):
        """Unlabelled samples to pseudo-label or adapt to (only where ``reads_unlabeled``)."""
        raise ConfigError(f"{field}: the {self.name} task has no unlabelled data kind")

    def with_labels(self, dataset, chosen, labels):
        raise ConfigError(f"the {self.name} task cannot add pseudo-labelled samples")

    def data_fingerprint(self, data: DataConfig, field: str = "train_file") -> str:
        """SHA-256 of the run's split ``field`` (what a stage trained on, so stacking can refuse leaks)."""
        from hfstage.data.sources import run_split_refs, split_fingerprint

        return split_fingerprint(run_split_refs(data)[field])

    def split_fingerprint(self, split, field: str = "data") -> str:
        from hfstage.data.sources import split_fingerprint

        return split_fingerprint(as_split_ref(split, field))

    def error_rate(self, train) -> float | None:
        """The fraction of mispronounced phonemes in the training split, for ``loss.pos_weight: auto``; None for a
        task without per-phoneme labels."""
        return None

    # --- model ----------------------------------------------------------------------------------------------
    def model_args(self, splits: Splits) -> dict[str, Any]:
        """Arguments the model's config takes from the data (not from the recipe)."""
        return {}

    def bind(self, model_config) -> None:
        """Read later splits as a trained model expects them (its classes, channels, image size)."""

    def bind_stage(self, stage_dir: Path) -> None:
        """Read later splits with what a saved stage keeps beside its model (speech: its processor)."""

    def save_with_model(self, folder: Path, model_config) -> None:
        """Write what a pipeline needs beside the model into a stage folder."""

    # --- stages ---------------------------------------------------------------------------------------------
    def check_stage(self, stage: StageConfig, where: str) -> None:
        """Refuse stage settings the task cannot honour (before anything trains). By default: no class-wise
        augmentation."""
        if stage.class_augmentation:
            raise ConfigError(f"{where}.class_augmentation: class-wise augmentation strength is for "
                              f"image_classification, not {self.name}")

    def check_stage_model(self, stage: StageConfig, model, where: str) -> None:
        """Refuse stage settings the model cannot honour."""

    def collator(self, stage: StageConfig | None, training: bool, model_config=None, **extra):
        raise NotImplementedError(f"{type(self).__name__}.collator")

    # --- decisions and metrics ------------------------------------------------------------------------------
    def decide(self, predictions):
        raise NotImplementedError(f"{type(self).__name__}.decide")

    def compute_metrics(self, eval_pred, **decision) -> dict[str, float]:
        raise NotImplementedError(f"{type(self).__name__}.compute_metrics")

    def tuned_decision(self, metrics: dict) -> dict[str, float]:
        """Decision settings chosen on the eval split when a stage ends (saved in the model's config, passed to
        ``compute_metrics`` for the test split); none by default."""
        return {}

    def evaluate_stage(self, checkpoint, path, field: str, accelerator, batch_size: int = 32):
        """(metrics, rows) of a saved stage on a split, for tasks whose outputs are not class decisions."""
        raise NotImplementedError(f"{type(self).__name__}.evaluate_stage")


def as_split_ref(split, field: str):
    from hfstage.data.sources import SplitRef

    return split if isinstance(split, SplitRef) else SplitRef(str(Path(split).parent), Path(split).name, field)


TASKS: Registry = Registry("task", "hfstage.tasks")


def load_run_splits(task, data, fields=("train_file", "eval_file", "test_file"), given: dict | None = None) -> dict:
    """The run's splits named by ``fields`` (of data.train_file/eval_file/test_file), by field, through
    ``task.load_split``; a ``datasets`` source without a ``test`` split runs without one unless ``data.test_file``
    names it. ``given``: data sets passed in from Python (see ``run_split_refs``)."""
    from hfstage.config import DataConfig
    from hfstage.data.sources import has_split, run_split_refs

    sets = {}
    for field, ref in run_split_refs(data, given).items():
        if ref is None or field not in fields:
            continue
        if ref.dataset and field == "test_file" and data.test_file == DataConfig.test_file and not has_split(ref):
            continue
        limit = data.max_train_samples if field == "train_file" else data.max_eval_samples
        sets[field] = task.load_split(ref, ref.where, limit)
    return sets
