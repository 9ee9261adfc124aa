"""Tasks: what binds a data kind to its collator, its stage augmentations and its metrics.

A new task is a data module plus an entry here; the curriculum engine is the same for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from hfstage.config import DataConfig, StageConfig
from hfstage.data import npz_pairs, npz_sequences
from hfstage.errors import DataError
from hfstage.metrics import classification_metrics
from hfstage.registry import Registry

TASKS: Registry = Registry("task")


@dataclass
class Splits:
    train: Dataset
    eval: Dataset
    test: Dataset | None


def load_split_files(task, data: DataConfig) -> tuple[Path, dict[str, str | None], dict[str, Dataset]]:
    """(root, {field: file name}, {field: dataset}) for the run's train, eval and (optional) test files."""
    root = Path(data.path)
    files = {"train_file": data.train_file, "eval_file": data.eval_file, "test_file": data.test_file}
    sets = {}
    for field, name in files.items():
        if name is None:
            continue
        limit = data.max_train_samples if field == "train_file" else data.max_eval_samples
        sets[field] = task.load_split(root / name, f"data.{field}", limit)
    return root, files, sets


def _limit(x: np.ndarray, y: np.ndarray, n: int | None):
    return (x, y) if n is None else (x[:n], y[:n])


@TASKS.register("pair_classification")
class PairClassificationTask:
    """Same/different image pairs from ``.npz`` files; one logit per pair; binary metrics."""

    name = "pair_classification"

    def load_split(self, path: Path, field: str = "data", limit: int | None = None) -> npz_pairs.PairDataset:
        """One split file, validated; ``field`` names the config field in error messages."""
        x, y = npz_pairs.load_pair_arrays(path, field)
        return npz_pairs.PairDataset(*_limit(x, y, limit))

    def load_splits(self, data: DataConfig) -> Splits:
        root, files, sets = load_split_files(self, data)
        train = sets["train_file"]
        for field, ds in sets.items():
            if ds.x.shape[1:] != train.x.shape[1:]:
                raise DataError(
                    f"{root / files[field]}: key 'x' has images of shape {tuple(ds.x.shape[2:])} but "
                    f"{root / data.train_file} has {tuple(train.x.shape[2:])} (data.{field})"
                )
        return Splits(train=train, eval=sets["eval_file"], test=sets.get("test_file"))

    def model_args(self, splits: Splits) -> dict[str, Any]:
        """Arguments the model's config takes from the data (not from the user)."""
        return {"image_size": list(splits.train.image_size)}

    def check_stage(self, stage: StageConfig, where: str) -> None:
        npz_pairs.check_pair_augmentation(stage.augmentation, where)

    def collator(self, stage: StageConfig | None, training: bool):
        return npz_pairs.PairCollator(stage.augmentation if (training and stage is not None) else None)

    def decide(self, predictions) -> tuple[np.ndarray, np.ndarray]:
        """Model outputs -> (predicted class, probability of the positive class) per sample."""
        if isinstance(predictions, (tuple, list)):  # logits first, any extra model outputs after
            predictions = predictions[0]
        logits = np.asarray(predictions, dtype=np.float64).reshape(len(predictions), -1)[:, 0]
        probs = 1 / (1 + np.exp(-logits))
        return (logits > 0).astype(np.int64), probs

    def compute_metrics(self, eval_pred) -> dict[str, float]:
        preds, _ = self.decide(eval_pred.predictions)
        return classification_metrics(preds, np.asarray(eval_pred.label_ids), average="binary")


@TASKS.register("sequence_classification")
class SequenceClassificationTask:
    """Padded feature clips from ``.npz`` files; C-class logits; macro-averaged metrics."""

    name = "sequence_classification"

    def load_split(self, path: Path, field: str = "data", limit: int | None = None) -> npz_sequences.SequenceDataset:
        a = npz_sequences.load_sequence_arrays(path, field)
        n = len(a["y"]) if limit is None else limit
        return npz_sequences.SequenceDataset(a["x"][:n], a["y"][:n], a["lengths"][:n], a.get("classes"))

    def load_splits(self, data: DataConfig) -> Splits:
        root, files, sets = load_split_files(self, data)
        train = sets["train_file"]
        n_classes = self.num_labels(train)
        for field, ds in sets.items():
            where = root / files[field]
            if ds.x.shape[2] != train.x.shape[2]:
                raise DataError(f"{where}: key 'x' has {ds.x.shape[2]} features per frame but "
                                f"{root / data.train_file} has {train.x.shape[2]} (data.{field})")
            if int(ds.y.max()) >= n_classes:
                raise DataError(f"{where}: key 'y' has class {int(ds.y.max())}, outside the {n_classes} classes "
                                f"of the training split (data.{field})")
        return Splits(train=train, eval=sets["eval_file"], test=sets.get("test_file"))

    @staticmethod
    def num_labels(train) -> int:
        return len(train.classes) if train.classes else int(train.y.max()) + 1

    def model_args(self, splits: Splits) -> dict[str, Any]:
        return {"input_dim": int(splits.train.x.shape[2]), "num_labels": self.num_labels(splits.train)}

    def check_stage(self, stage: StageConfig, where: str) -> None:
        npz_sequences.check_sequence_augmentation(stage.augmentation, where)

    def collator(self, stage: StageConfig | None, training: bool):
        return npz_sequences.SequenceCollator(stage.augmentation if (training and stage is not None) else None)

    def decide(self, predictions) -> tuple[np.ndarray, np.ndarray]:
        """Model outputs -> (predicted class, class probabilities (N, C)) per sample."""
        if isinstance(predictions, (tuple, list)):
            predictions = predictions[0]
        logits = np.asarray(predictions, dtype=np.float64)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        return logits.argmax(axis=1), probs

    def compute_metrics(self, eval_pred) -> dict[str, float]:
        preds, _ = self.decide(eval_pred.predictions)
        return classification_metrics(preds, np.asarray(eval_pred.label_ids), average="macro")
