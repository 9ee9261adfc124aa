"""Accuracy, precision, recall and F1 as local `evaluate` metrics.

Binary problems use ``average="binary"`` (the positive class is 1); multi-class problems default to
``average="macro"``. Computed from the confusion matrix with numpy: no scikit-learn needed.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_FEATURES = datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")})
_INPUTS = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): true class ids.
    average (str): "binary" (positive class 1), "macro", "micro" or "weighted".
"""


def _confusion(predictions, references) -> tuple[np.ndarray, np.ndarray]:
    preds = np.asarray(predictions, dtype=np.int64)
    refs = np.asarray(references, dtype=np.int64)
    labels = np.union1d(preds, refs)
    index = {int(c): i for i, c in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(cm, ([index[int(r)] for r in refs], [index[int(p)] for p in preds]), 1)
    return cm, labels


def _prf(predictions, references, average: str) -> tuple[float, float, float]:
    """Precision, recall and F1 with sklearn's conventions (0 where undefined)."""
    cm, labels = _confusion(predictions, references)
    tp = np.diag(cm).astype(float)
    pred_pos = cm.sum(axis=0).astype(float)
    true_pos = cm.sum(axis=1).astype(float)
    if average == "binary":
        if 1 not in labels:
            return 0.0, 0.0, 0.0
        i = int(np.where(labels == 1)[0][0])
        tp, pred_pos, true_pos = tp[i : i + 1], pred_pos[i : i + 1], true_pos[i : i + 1]
        average = "macro"
    if average == "micro":
        tp, pred_pos, true_pos = tp.sum(keepdims=True), pred_pos.sum(keepdims=True), true_pos.sum(keepdims=True)
        average = "macro"
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(pred_pos > 0, tp / pred_pos, 0.0)
        recall = np.where(true_pos > 0, tp / true_pos, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    if average == "macro":
        return float(precision.mean()), float(recall.mean()), float(f1.mean())
    if average == "weighted":
        w = true_pos / true_pos.sum()
        return float((precision * w).sum()), float((recall * w).sum()), float((f1 * w).sum())
    raise ValueError(f"average must be binary, macro, micro or weighted, not {average!r}")


class _ClassificationMetric(evaluate.Metric):
    description = ""

    def _info(self):
        return evaluate.MetricInfo(
            description=self.description, citation="", inputs_description=_INPUTS, features=_FEATURES
        )


class Accuracy(_ClassificationMetric):
    description = "Fraction of predictions equal to the reference."

    def _compute(self, predictions, references, average=None):
        # `average` is accepted so `evaluate.combine` can pass one set of kwargs to every metric.
        preds, refs = np.asarray(predictions), np.asarray(references)
        return {"accuracy": float((preds == refs).mean()) if len(refs) else 0.0}


class Precision(_ClassificationMetric):
    description = "TP / (TP + FP)."

    def _compute(self, predictions, references, average="binary"):
        return {"precision": _prf(predictions, references, average)[0]}


class Recall(_ClassificationMetric):
    description = "TP / (TP + FN)."

    def _compute(self, predictions, references, average="binary"):
        return {"recall": _prf(predictions, references, average)[1]}


class F1(_ClassificationMetric):
    description = "Harmonic mean of precision and recall."

    def _compute(self, predictions, references, average="binary"):
        return {"f1": _prf(predictions, references, average)[2]}


def classification_metrics(predictions, references, average: str = "binary") -> dict[str, float]:
    """Accuracy, F1, precision and recall in one call, through ``evaluate.combine``."""
    # keep_in_memory: no cache files, so processes of a distributed run never share one.
    combined = evaluate.combine([cls(keep_in_memory=True) for cls in (Accuracy, F1, Precision, Recall)])
    return combined.compute(
        predictions=np.asarray(predictions, dtype=np.int64),
        references=np.asarray(references, dtype=np.int64),
        average=average,
    )
