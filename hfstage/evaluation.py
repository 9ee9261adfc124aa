"""Evaluate saved checkpoints: ``hfstage evaluate CHECKPOINT [--data DIR] [--split NAME]``.

The model type comes from the checkpoint's ``config.json`` and the task and data from its
``stage.json`` / ``run.json``, never from the folder's name. Prediction is prepared by accelerate, so
under ``accelerate launch`` every process predicts a shard and ``gather_for_metrics`` collects them
without duplicated or dropped samples. Only the main process writes ``eval/<split>.json`` (and, on request,
the predictions CSV, the confusion-matrix PNG and the per-class report) next to the checkpoint.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers.trainer_utils import EvalPrediction

from hfstage.checkpoint import atomic_write, atomic_write_json, atomic_write_text
from hfstage.config import DataConfig
from hfstage.data.sources import SplitRef, source_kind, split_fingerprint, split_ref
from hfstage.devices import cpu_only
from hfstage.errors import ConfigError
from hfstage.losses import CrossEntropyLoss
from hfstage.models import load_saved_config
from hfstage.reporting import format_table, versions
from hfstage.resolve import Checkpoint, resolve_checkpoint
from hfstage.tasks import TASKS

logger = logging.getLogger("hfstage")

SPLIT_FIELDS = {"train": "train_file", "val": "eval_file", "eval": "eval_file", "test": "test_file"}


def checkpoint_task(checkpoint: Checkpoint):
    """The checkpoint's task, told the model's class names (so every split maps them to the same ids) and the
    run's ``data.columns``."""
    task = TASKS.get(checkpoint.task, "task")()
    task.configure(checkpoint.data)  # the data set's column names, as the run mapped them
    task.bind(load_saved_config(checkpoint.stage_dir))
    task.bind_stage(checkpoint.stage_dir)  # speech: the stage's own processor (feature extractor and phoneme vocabulary)
    return task


def split_path(data: DataConfig, split: str) -> SplitRef:
    """``train``/``val``/``test`` name the run's splits; any other NAME means the file or folder NAME under the data
    folder (an image split's folder: ``test_shifted``), else ``NAME.npz`` there, or the split NAME of a ``datasets``
    source."""
    field = SPLIT_FIELDS.get(split)
    if field:
        name = getattr(data, field)
    elif source_kind(data) or (Path(data.path) / split).exists():
        name = split
    else:
        name = f"{split}.npz"
    if name is None:
        raise ConfigError(f"--split {split}: the run has no {field}")
    return split_ref(data, name, f"--split {split}")


def predict(accelerator: Accelerator, checkpoint: Checkpoint, task, dataset, batch_size: int = 512):
    """(logits, labels) over ``dataset`` in order, gathered from every process."""
    model = checkpoint.load_model().eval()
    collate = task.collator(None, training=False, model_config=model.config)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    model, loader = accelerator.prepare(model, loader)
    logits, labels = [], []
    with torch.no_grad():
        for batch in loader:
            target = batch.pop("labels")
            out = model(**batch).logits
            out, target = accelerator.gather_for_metrics((out, target))
            logits.append(out.float().cpu())
            labels.append(target.cpu())
    return torch.cat(logits), torch.cat(labels)


def evaluate_checkpoint(path: str | Path, data_dir: str | None = None, split: str = "test",
                        save_predictions: bool = False, batch_size: int = 512, out: str | None = None) -> dict:
    """Evaluate a checkpoint on one split; writes ``<eval dir>/<split>.json`` and returns its content.

    The eval dir is ``out`` when given, else ``eval/`` beside a local stage (see ``Checkpoint.eval_dir``).
    """
    accelerator = Accelerator(cpu=cpu_only())
    checkpoint = resolve_checkpoint(path)
    if data_dir is not None:
        checkpoint.data.path = data_dir
    file = split_path(checkpoint.data, split)
    task = checkpoint_task(checkpoint)
    if task.evaluates_own_outputs:  # tasks with their own outputs and metrics (speech)
        return _evaluate_own(task, checkpoint, file, split, accelerator, save_predictions, batch_size, out)
    dataset = task.load_split(file, f"--split {split}")
    began = time.time()
    logits, label_tensor = predict(accelerator, checkpoint, task, dataset, batch_size)
    if len(label_tensor) != len(dataset):
        raise RuntimeError(f"gathered {len(label_tensor)} predictions for {len(dataset)} samples")  # a bug, not input
    # the same scale as the curriculum's eval_loss: plain cross-entropy
    metrics = {"loss": float(CrossEntropyLoss()(logits, label_tensor))}
    metrics.update(task.compute_metrics(EvalPrediction(predictions=logits.numpy(), label_ids=label_tensor.numpy())))
    preds, probs = task.decide(logits.numpy())
    labels = label_tensor.numpy()
    result = _record(checkpoint, split, file, split_fingerprint(file), len(labels), metrics, began,
                     accelerator.num_processes)
    if accelerator.is_main_process:
        eval_dir = Path(out) if out else checkpoint.eval_dir
        atomic_write_json(eval_dir / f"{split}.json", result)
        report = per_class_report(preds, labels)
        atomic_write_json(eval_dir / f"{split}_per_class.json", report)
        write_confusion_png(report["confusion_matrix"], report["classes"], eval_dir / f"{split}_confusion.png")
        if save_predictions:
            atomic_write_text(eval_dir / f"{split}_predictions.csv", predictions_csv(preds, labels, probs))
    accelerator.wait_for_everyone()
    return result


def _record(checkpoint, split, file, sha256, samples, metrics, began, world_size) -> dict:
    return eval_record(checkpoint.reference or str(checkpoint.stage_dir), checkpoint.stage_record.stage_name,
                       checkpoint.task, split, file, sha256, samples, metrics, began, world_size)


def eval_record(evaluated: str, stage_name: str, task: str, split: str, file, sha256: str, samples: int, metrics: dict,
                began: float, world_size: int) -> dict:
    """What ``eval/<split>.json`` holds (a stage's evaluation, or a fitted stack's)."""
    return {
        "checkpoint": evaluated,
        "stage_name": stage_name,
        "task": task,
        "split": split,
        "data_file": str(file),
        "data_sha256": sha256,
        "samples": int(samples),
        "metrics": metrics,
        "seconds": round(time.time() - began, 3),
        "world_size": world_size,
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "versions": versions(),
    }


def _evaluate_own(task, checkpoint, file, split, accelerator, save_predictions, batch_size, out) -> dict:
    began = time.time()
    metrics, rows = task.evaluate_stage(checkpoint, file, f"--split {split}", accelerator, batch_size)
    sha = task.split_fingerprint(file, f"--split {split}")
    result = {**_record(checkpoint, split, file, sha, len(rows), metrics, began, 1), "examples": rows[:5]}
    if accelerator.is_main_process:
        eval_dir = Path(out) if out else checkpoint.eval_dir
        atomic_write_json(eval_dir / f"{split}.json", result)
        if save_predictions:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_text(eval_dir / f"{split}_predictions.csv", buf.getvalue())
    return result


def predictions_csv(preds: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> str:
    """id, label, prediction, probability (of the positive class, or of the predicted class), and for
    multi-class tasks one ``p_<class>`` column per class."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    multi = probs.ndim == 2
    writer.writerow(["id", "label", "prediction", "probability"] + ([f"p_{c}" for c in range(probs.shape[1])] if multi else []))
    for i, (y, p, q) in enumerate(zip(labels, preds, probs)):
        if multi:
            writer.writerow([i, int(y), int(p), f"{float(q[p]):.6f}", *(f"{float(v):.6f}" for v in q)])
        else:
            writer.writerow([i, int(y), int(p), f"{float(q):.6f}"])
    return buf.getvalue()


def per_class_report(preds: np.ndarray, labels: np.ndarray) -> dict:
    """Precision, recall, F1 and support per class, and the confusion matrix (rows = true class)."""
    classes = [int(c) for c in np.union1d(preds, labels)]
    index = {c: i for i, c in enumerate(classes)}
    cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for y, p in zip(labels, preds):
        cm[index[int(y)], index[int(p)]] += 1
    rows = {}
    for c, i in index.items():
        tp = cm[i, i]
        precision = tp / cm[:, i].sum() if cm[:, i].sum() else 0.0
        recall = tp / cm[i].sum() if cm[i].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows[str(c)] = {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(cm[i].sum())}
    return {"classes": classes, "per_class": rows, "confusion_matrix": cm.tolist()}


def write_confusion_png(cm: list[list[int]], classes: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(classes), 1.0 + 0.6 * len(classes)), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), [str(c) for c in classes])
    ax.set_yticks(range(len(classes)), [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black")
    fig.tight_layout()
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format="png"), binary=True)
    finally:
        plt.close(fig)


def format_result(result: dict) -> str:
    rows = [("metric", "value")] + [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in result["metrics"].items()]
    head = f"{result['checkpoint']} on {result['data_file']} ({result['samples']} samples, {result['seconds']:.1f} s)"
    text = head + "\n" + format_table(rows)
    if result.get("examples"):
        keys = list(result["examples"][0])
        text += "\n\nexamples\n" + format_table([tuple(keys)] + [tuple(str(e[k]) for k in keys) for e in result["examples"]])
    return text
