"""Pseudo-labels: a stage with ``pseudo_labels: true`` adds confidently predicted unlabelled images to its
training data.

Before the stage trains, the model it starts from predicts every image of ``data.unlabeled_file``; those
whose top class probability is at least ``pseudo_threshold`` join the training split with that class
as their label. What was added (candidates, added, per class) is recorded in the stage's ``stage.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader

from hfstage.data.sources import source_kind
from hfstage.errors import ConfigError

logger = logging.getLogger("hfstage")


def check_pseudo_labels(cfg, task, stage, where: str) -> None:
    if stage.pseudo_labels:
        require_unlabeled_images(cfg, task, f"{where}.pseudo_labels", "pseudo-labels", "to label")


def require_unlabeled_images(cfg, task, at: str, what: str, purpose: str) -> None:
    """A stage step that reads ``data.unlabeled_file`` (pseudo-labels, domain adaptation) needs an image task and a
    local folder of images."""
    if not task.reads_unlabeled:
        raise ConfigError(f"{at}: the {cfg.task} task has no unlabelled data kind; {what} are for image_classification")
    if cfg.data.unlabeled_file is None:
        raise ConfigError(f"{at}: set data.unlabeled_file, the folder of unlabelled images {purpose}")
    if source_kind(cfg.data) is not None:
        raise ConfigError(f"{at}: data.unlabeled_file is a folder under data.path, which is a datasets source here; "
                          f"{what} read a local image folder so far")


def add_pseudo_labels(cfg, task, stage, model, train):
    """(training set with the confident unlabelled samples added, record for stage.json)."""
    unlabeled = task.load_unlabeled(Path(cfg.data.path) / cfg.data.unlabeled_file, "data.unlabeled_file")
    probs = predict_probabilities(task, model, unlabeled, stage.eval_batch_size)
    confidence, label = probs.max(axis=1), probs.argmax(axis=1)
    chosen = np.flatnonzero(confidence >= stage.pseudo_threshold)
    added = task.with_labels(unlabeled, chosen, label[chosen])
    record = {"candidates": len(unlabeled), "added": int(len(chosen)), "threshold": stage.pseudo_threshold,
              "per_class": {str(c): int((label[chosen] == c).sum()) for c in np.unique(label[chosen])}}
    logger.info("pseudo-labels: %d of %d unlabelled samples have confidence >= %g and join the training data",
                len(chosen), len(unlabeled), stage.pseudo_threshold)
    return (ConcatDataset([train, added]) if len(chosen) else train), record


def predict_probabilities(task, model, dataset, batch_size: int) -> np.ndarray:
    """(N, C) class probabilities of ``model`` over ``dataset`` in order (evaluation transforms)."""
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        collate_fn=task.collator(None, training=False, model_config=model.config))
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for batch in loader:
            batch.pop("labels", None)
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
            out.append(torch.softmax(logits, dim=-1).cpu().numpy())
    model.train(was_training)
    return np.concatenate(out)
