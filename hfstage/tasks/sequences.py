"""Feature sequences (keypoint or sensor clips), many classes: C logits, macro-averaged metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hfstage.config import DataConfig, StageConfig
from hfstage.data import npz_sequences
from hfstage.data.sources import SplitRef, open_split, run_split_refs
from hfstage.errors import DataError
from hfstage.metrics import classification_metrics
from hfstage.tasks.base import TASKS, CardFacts, Field, Splits, Task, as_split_ref, load_run_splits


class MultiClassDecisions:
    """Softmax over C logits; macro-averaged metrics."""

    def decide(self, predictions) -> tuple[np.ndarray, np.ndarray]:
        """Model outputs -> (predicted class, class probabilities (N, C)) per sample."""
        if isinstance(predictions, (tuple, list)):
            predictions = predictions[0]
        logits = np.asarray(predictions, dtype=np.float64)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        return logits.argmax(axis=1), probs

    def compute_metrics(self, eval_pred, **decision) -> dict[str, float]:
        preds, _ = self.decide(eval_pred.predictions)
        return classification_metrics(preds, np.asarray(eval_pred.label_ids), average="macro")


@TASKS.register("sequence_classification")
class SequenceClassificationTask(MultiClassDecisions, Task):
    """Feature clips (``.npz`` files or any ``datasets`` source); C-class logits; macro-averaged metrics."""

    name = "sequence_classification"
    fields = (
        Field("features", "feature_sequence", help="T frames of F features"),
        Field("lengths", "lengths", optional=True, help="valid frames per row (default: all, or the ragged length)"),
        Field("label", "class_label", help="the class"),
    )
    card = CardFacts(None, "tabular-classification", "Feature-sequence classification",
                     "feature-sequence-classification", "classify(features)  # a (T, F) array")
    has_lengths = True

    def __init__(self):
        super().__init__()
        self.classes: list[str] | None = None  # the training split's class names, for string labels

    def bind(self, model_config) -> None:
        """Use a trained model's classes for string labels of the splits loaded next."""
        names = getattr(model_config, "id2label", None) or {}
        if names and not all(str(v).startswith("LABEL_") for v in names.values()):
            self.classes = [names[i] for i in range(len(names))]

    def load_split(self, split: SplitRef | Path, field: str = "data",
                   limit: int | None = None) -> npz_sequences.SequenceDataset:
        ref = as_split_ref(split, field)
        if ref.dataset:
            return npz_sequences.SequenceDataset.from_dataset(open_split(ref), self.columns, f"{ref} ({field})",
                                                              self.classes, limit)
        dataset = npz_sequences.npz_as_dataset(ref.path, field, self.columns)  # data.columns names its keys
        return npz_sequences.SequenceDataset.from_dataset(dataset, {}, f"{ref.path} ({field})", None, limit,
                                                          checked=True)

    def load_splits(self, data: DataConfig, given: dict | None = None, model: dict | None = None) -> Splits:
        self.configure(data, model)
        self.classes = None
        refs = run_split_refs(data, given)
        train = self.load_split(refs["train_file"], refs["train_file"].where, data.max_train_samples)
        self.classes = train.classes
        sets = {"train_file": train, **load_run_splits(self, data, ("eval_file", "test_file"), given)}
        n_classes = self.num_labels(train)
        for field, ds in sets.items():
            where = refs[field]
            x, y = ((f"column {self.columns.get(f, f)!r}" for f in ("features", "label")) if where.dataset
                    else ("key 'x'", "key 'y'"))
            if ds.feature_dim != train.feature_dim:
                raise DataError(f"{where}: {x} has {ds.feature_dim} features per frame but {refs['train_file']} has "
                                f"{train.feature_dim} (data.{field})")
            if int(ds.y.max()) >= n_classes:
                raise DataError(f"{where}: {y} has class {int(ds.y.max())}, outside the {n_classes} classes "
                                f"of the training split (data.{field})")
        return Splits(train=train, eval=sets["eval_file"], test=sets.get("test_file"))

    @staticmethod
    def num_labels(train) -> int:
        return len(train.classes) if train.classes else int(train.y.max()) + 1

    def model_args(self, splits: Splits) -> dict[str, Any]:
        classes = splits.train.classes
        names = {"id2label": dict(enumerate(classes)), "label2id": {c: i for i, c in enumerate(classes)}} if classes else {}
        return {"input_dim": splits.train.feature_dim, "num_labels": self.num_labels(splits.train), **names}

    def check_stage(self, stage: StageConfig, where: str) -> None:
        npz_sequences.check_sequence_augmentation(stage.augmentation, where)
        super().check_stage(stage, where)

    def collator(self, stage: StageConfig | None, training: bool, model_config=None, **extra):
        return npz_sequences.SequenceCollator(stage.augmentation if (training and stage is not None) else None)

    def save_with_model(self, folder: Path, model_config) -> None:
        """The feature-sequence-classification pipeline's settings: the feature count of a (T, F) sequence."""
        from hfstage.pipelines import save_processor

        save_processor(folder, "sequences", input_dim=model_config.input_dim)
