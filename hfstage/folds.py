"""k-fold training: ``folds: 5`` runs the whole curriculum once per stratified fold of the training split.

Layout (folds are numbered from 0, as in most k-fold code)::

    <output_dir>/fold_<k>/      a complete run: its held-out part of the training split is its eval split
    <output_dir>/oof.npy        out-of-fold probabilities of every training sample (N,) or (N, C)
    <output_dir>/oof_ids.npy    the samples' ids (file names for images, indices for .npz), same order
    <output_dir>/oof_labels.npy their labels
    <output_dir>/test_probs.npy mean of the folds' probabilities on the test split (+ test_ids.npy)
    <output_dir>/cv.json        per-fold metrics of each fold's best stage, CV mean +- std, OOF metrics

The out-of-fold files are what ``hfstage stack`` uses as meta-features: every sample is predicted by a
model that never trained on it. ``fold: K`` trains one fold only (to spread folds over machines); a later
run without ``fold`` trains what is missing and writes the out-of-fold files.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from pathlib import Path

import numpy as np
from torch.utils.data import Subset

from hfstage.checkpoint import atomic_save_npy, atomic_write_json, read_json
from hfstage.errors import ConfigError

logger = logging.getLogger("hfstage")

CV_JSON = "cv.json"


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


def fold_config(cfg, k: int):
    out = Path(cfg.output_dir) / f"fold_{k}"
    return dataclasses.replace(cfg, fold=k, output_dir=str(out),
                               hub_repo_id=f"{cfg.hub_repo_id}-fold-{k}" if cfg.hub_repo_id else None,
                               stages=[dataclasses.replace(s) for s in cfg.stages])


def run_folds(cfg, config_file=None, callbacks=()) -> dict:
    """Every fold (or the one ``cfg.fold`` names), then, when all are done, the out-of-fold files."""
    from hfstage.curriculum import run
    from hfstage.devices import distributed_state

    ks = [cfg.fold] if cfg.fold is not None else list(range(cfg.folds))
    finals = [run(fold_config(cfg, k), config_file, callbacks) for k in ks]
    if cfg.fold is not None:
        return finals[0]
    summary = write_out_of_fold(cfg)
    if distributed_state().is_main_process:
        print(format_cv(summary), flush=True)
    return summary


def write_out_of_fold(cfg) -> dict:
    """Predict each fold's held-out part with its best stage; write oof.npy, test_probs.npy and cv.json."""
    from accelerate import Accelerator

    from hfstage.devices import cpu_only, distributed_state
    from hfstage.evaluation import predict, resolve_checkpoint
    from hfstage.tasks import TASKS

    task = TASKS.get(cfg.task, "task")()
    splits = task.load_splits(cfg.data)
    y = labels_of(splits.train)
    accelerator = Accelerator(cpu=cpu_only())
    oof, test_sum, per_fold = None, None, []
    key = cfg.metric_for_best_model
    for k, (_, held) in enumerate(fold_indices(y, cfg.folds, cfg.seed)):
        checkpoint = resolve_checkpoint(Path(cfg.output_dir) / f"fold_{k}")
        logits, _ = predict(accelerator, checkpoint, task, FoldSubset(splits.train, held), cfg.stages[-1].eval_batch_size)
        _, probs = task.decide(logits.numpy())
        if oof is None:
            oof = np.zeros((len(y),) + probs.shape[1:], dtype=np.float32)
        oof[held] = probs
        if splits.test is not None:
            logits, _ = predict(accelerator, checkpoint, task, splits.test, cfg.stages[-1].eval_batch_size)
            probs = task.decide(logits.numpy())[1]
            test_sum = probs if test_sum is None else test_sum + probs
        record = checkpoint.stage_record
        per_fold.append({"fold": k, "best_stage_dir": checkpoint.stage_dir.name, "held_out": int(len(held)),
                         key: record["metrics"].get(key), "eval_accuracy": record["metrics"].get("eval_accuracy"),
                         "test_accuracy": record.get("test_metrics", {}).get("test_accuracy")})
    preds = oof.argmax(axis=1) if oof.ndim == 2 else (oof > 0.5).astype(np.int64)
    summary = {"folds": cfg.folds, "seed": cfg.seed, "metric": key, "per_fold": per_fold,
               "oof_accuracy": float((preds == y).mean()), "samples": int(len(y))}
    for name in dict.fromkeys([key, "eval_accuracy", "test_accuracy"]):
        values = [f[name] for f in per_fold if isinstance(f.get(name), (int, float))]
        if values:
            summary[f"{name}_mean"] = statistics.mean(values)
            summary[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    if test_sum is not None:
        test_probs = (test_sum / cfg.folds).astype(np.float32)
        test_y = labels_of(splits.test)
        test_pred = test_probs.argmax(axis=1) if test_probs.ndim == 2 else (test_probs > 0.5).astype(np.int64)
        summary["test_accuracy_fold_mean_ensemble"] = float((test_pred == test_y).mean())
    if distributed_state().is_main_process:
        out = Path(cfg.output_dir)
        atomic_save_npy(out / "oof.npy", oof)
        atomic_save_npy(out / "oof_ids.npy", sample_ids(splits.train))
        atomic_save_npy(out / "oof_labels.npy", y)
        if test_sum is not None:
            atomic_save_npy(out / "test_probs.npy", test_probs)
            atomic_save_npy(out / "test_ids.npy", sample_ids(splits.test))
        atomic_write_json(out / CV_JSON, {**summary, "config": cfg.to_dict()})
    accelerator.wait_for_everyone()
    return summary


def format_cv(summary: dict) -> str:
    from hfstage.reporting import format_number, format_table

    key = summary["metric"]
    rows = [("fold", "best_stage", key, "test_accuracy")]
    for f in summary["per_fold"]:
        rows.append((str(f["fold"]), f["best_stage_dir"], format_number(f.get(key)), format_number(f.get("test_accuracy"))))
    rows.append(("mean +- std", "",
                 *(f"{summary[f'{n}_mean']:.4f} +- {summary[f'{n}_std']:.4f}" if f"{n}_mean" in summary else "-"
                   for n in (key, "test_accuracy"))))
    lines = [format_table(rows), f"out-of-fold accuracy {summary['oof_accuracy']:.4f} on {summary['samples']} samples"]
    if "test_accuracy_fold_mean_ensemble" in summary:
        lines.append(f"test accuracy of the folds' mean probabilities {summary['test_accuracy_fold_mean_ensemble']:.4f}")
    return "\n".join(lines)


def fold_checkpoints(reference: str):
    """(each fold's best-stage Checkpoint, cv.json) for a finished k-fold run folder; None for anything else."""
    from hfstage.errors import CheckpointError
    from hfstage.evaluation import resolve_checkpoint

    if reference.startswith("hf://"):
        return None
    cv = load_cv(reference)
    if cv is None:
        if (Path(reference) / "fold_0").is_dir():
            raise CheckpointError(f"{reference}: a k-fold run without {CV_JSON}; rerun its config to finish every fold")
        return None
    folds = sorted(Path(reference).glob("fold_*"), key=lambda p: int(p.name.split("_")[1]))
    if len(folds) != cv["folds"]:
        raise CheckpointError(f"{reference}: {CV_JSON} says {cv['folds']} folds but {len(folds)} fold folders are here")
    return [resolve_checkpoint(f) for f in folds], cv


def load_cv(path: str | Path) -> dict | None:
    """``cv.json`` of a k-fold run folder, or None when it is not one."""
    path = Path(path)
    return read_json(path / CV_JSON) if (path / CV_JSON).is_file() else None
