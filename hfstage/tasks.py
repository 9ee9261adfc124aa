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
from hfstage.data import npz_pairs
from hfstage.errors import DataError
from hfstage.metrics import classification_metrics
from hfstage.registry import Registry

TASKS: Registry = Registry("task")


@dataclass
class Splits:
    train: Dataset
    eval: Dataset
    test: Dataset | None


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
        root = Path(data.path)
        files = {"train_file": data.train_file, "eval_file": data.eval_file, "test_file": data.test_file}
        sets: dict[str, npz_pairs.PairDataset] = {}
        for field, name in files.items():
            if name is None:
                continue
            limit = data.max_train_samples if field == "train_file" else data.max_eval_samples
            sets[field] = self.load_split(root / name, f"data.{field}", limit)
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
