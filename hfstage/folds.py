"""k-fold splits: stratified folds of the training split, and one fold's (train, held-out) data; and the
training split joined with the eval split for a ``train_on_eval`` stage.

Folds are numbered from 0, as in most k-fold code; fold ``k`` trains on the other folds and is evaluated
on its own held-out part. Running every fold and writing the out-of-fold files is ``sweeps.py``'s job.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from torch.utils.data import ConcatDataset, Subset

from hfstage.errors import ConfigError

logger = logging.getLogger("hfstage")


class FoldSubset(Subset):
    """Part of a split; other attributes (image size, classes ...) are the full split's."""

    def __getattr__(self, name):
        if name in ("dataset", "indices") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    @property
    def y(self):
        return self.dataset.y[self.indices]

    @property
    def lengths(self):
        return np.asarray(self.dataset.lengths)[self.indices]  # AttributeError when the data has none

    @property
    def ids(self):
        return sample_ids(self.dataset)[self.indices]


class JoinedSplits(ConcatDataset):
    """The training split followed by the eval split (a ``train_on_eval`` stage); other attributes (image size,
    classes ...) are the training split's."""

    def __init__(self, train, eval_split):
        super().__init__([train, eval_split])

    def __getattr__(self, name):
        if name in ("datasets", "cumulative_sizes") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.datasets[0], name)

    @property
    def y(self):
        return np.concatenate([labels_of(d) for d in self.datasets])

    @property
    def lengths(self):
        return np.concatenate([np.asarray(d.lengths) for d in self.datasets])  # AttributeError when the data has none

    @property
    def ids(self):
        return np.concatenate([sample_ids(d) for d in self.datasets])


def sample_ids(dataset) -> np.ndarray:
    """File names for images, positions for array data."""
    ids = getattr(dataset, "ids", None)
    return np.asarray(ids) if ids is not None else np.arange(len(dataset))


def labels_of(dataset) -> np.ndarray:
    y = dataset.y
    return y.numpy() if hasattr(y, "numpy") else np.asarray(y)


def fold_indices(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (train, held-out) index pairs; refuses classes too small to appear in every fold."""
    from sklearn.model_selection import StratifiedKFold

    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < folds:
        c = classes[counts.argmin()]
        raise ConfigError(f"folds: {folds} stratified folds need at least {folds} training samples of every class; "
                          f"class {c} has {counts.min()}")
    return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def fold_splits(splits, cfg):
    """The run's splits for fold ``cfg.fold``: train on the other folds, evaluate on this one."""
    train_idx, held_idx = fold_indices(labels_of(splits.train), cfg.folds, cfg.seed)[cfg.fold]
    logger.info("fold %d of %d: %d training samples, %d held out", cfg.fold, cfg.folds, len(train_idx), len(held_idx))
    return dataclasses.replace(splits, train=FoldSubset(splits.train, train_idx),
                               eval=FoldSubset(splits.train, held_idx))
