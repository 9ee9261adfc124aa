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

    def load_splits(self, data: DataConfig) -> Splits:
        root = Path(data.path)
        files = {"train_file": data.train_file, "eval_file": data.eval_file, "test_file": data.test_file}
        loaded: dict[str, Any] = {}
        for field, name in files.items():
            if name is None:
                continue
            x, y = npz_pairs.load_pair_arrays(root / name, f"data.{field}")
            limit = data.max_train_samples if field == "train_file" else data.max_eval_samples
            loaded[field] = (root / name, _limit(x, y, limit))
        train_path, (train_x, _) = loaded["train_file"]
        for field, (path, (x, _)) in loaded.items():
            if x.shape[1:] != train_x.shape[1:]:
                raise DataError(
                    f"{path}: key 'x' has images of shape {tuple(x.shape[2:])} but {train_path} has "
                    f"{tuple(train_x.shape[2:])} (data.{field})"
                )
        sets = {k: npz_pairs.PairDataset(*arrays) for k, (_, arrays) in loaded.items()}
        return Splits(train=sets["train_file"], eval=sets["eval_file"], test=sets.get("test_file"))

    def model_args(self, splits: Splits) -> dict[str, Any]:
        """Arguments the model's config takes from the data (not from the user)."""
        return {"image_size": list(splits.train.image_size)}

    def check_stage(self, stage: StageConfig, where: str) -> None:
        npz_pairs.check_pair_augmentation(stage.augmentation, where)

    def collator(self, stage: StageConfig | None, training: bool):
        return npz_pairs.PairCollator(stage.augmentation if (training and stage is not None) else None)

    def compute_metrics(self, eval_pred) -> dict[str, float]:
        predictions = eval_pred.predictions
        if isinstance(predictions, (tuple, list)):  # logits first, any extra model outputs after
            predictions = predictions[0]
        logits = np.asarray(predictions).reshape(len(eval_pred.label_ids), -1)
        preds = (logits[:, 0] > 0).astype(np.int64) if logits.shape[1] == 1 else logits.argmax(-1)
        return classification_metrics(preds, np.asarray(eval_pred.label_ids), average="binary")
