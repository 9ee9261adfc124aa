"""Speech metrics: phoneme error rate (PER) from greedy CTC decoding, and mispronunciation detection
(accuracy, precision, recall, F1 of the mispronounced class, and F1 weighted over both classes), as
local ``evaluate`` metric modules so they work offline."""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

from hfstage.metrics.classification import classification_metrics


def edit_distance(a: list, b: list) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def greedy_decode(logits: np.ndarray, length: int, blank: int = 0) -> list[int]:
    """Best path: argmax per frame, repeats collapsed, blanks removed."""
    best = np.asarray(logits)[:length].argmax(axis=-1)
    out, last = [], None
    for token in best.tolist():
        if token != last and token != blank:
            out.append(token)
        last = token
    return out


class PhonemeErrorRate(evaluate.Metric):
    """Total edit distance over total reference length (not a mean of per-clip rates)."""

    def _info(self):
        seq = datasets.Sequence(datasets.Value("int64"))
        return evaluate.MetricInfo(description="phoneme error rate", citation="", inputs_description="id sequences",
                                   features=datasets.Features({"predictions": seq, "references": seq}))

    def _compute(self, predictions, references):
        errors = sum(edit_distance(p, r) for p, r in zip(predictions, references))
        return {"per": errors / max(1, sum(len(r) for r in references))}


def speech_metrics(ctc_logits: np.ndarray, lengths: np.ndarray, labels: np.ndarray, error_logits: np.ndarray,
                   error_labels: np.ndarray) -> dict[str, float]:
    """PER over the clips and error-detection metrics over the valid canonical phonemes (labels -100 = padding)."""
    predictions = [greedy_decode(ctc_logits[i], int(lengths[i])) for i in range(len(labels))]
    references = [[int(t) for t in row if t >= 0] for row in labels]
    out = PhonemeErrorRate().compute(predictions=predictions, references=references)
    valid = error_labels >= 0
    preds = (error_logits[valid] > 0).astype(np.int64)
    truth = error_labels[valid].astype(np.int64)
    binary = classification_metrics(preds, truth, average="binary")
    weighted = classification_metrics(preds, truth, average="weighted")
    out.update({f"error_{k}": v for k, v in binary.items()})
    out["error_weighted_f1"] = weighted["f1"]
    return out
