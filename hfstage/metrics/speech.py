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


def error_probabilities(error_logits) -> np.ndarray:
    """Mispronunciation probabilities of error-head logits (float64)."""
    return 1 / (1 + np.exp(-np.clip(np.asarray(error_logits, dtype=np.float64), -60, 60)))


def error_flags(error_logits, threshold: float = 0.5) -> np.ndarray:
    """The one decision rule for flags everywhere (metrics, evaluate's rows, the pipeline): ``p > threshold``."""
    return error_probabilities(error_logits) > threshold


def best_threshold(probs: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """The probability threshold (flag when ``p > t``) with the best F1 on these phonemes, and that F1. Midway
    between the last flagged and the next probability, so the same scores give the same flags."""
    probs, truth = np.asarray(probs, dtype=np.float64), np.asarray(truth).astype(bool)
    positives = int(truth.sum())
    if positives == 0 or len(probs) == 0:
        return 0.5, 0.0
    order = np.argsort(-probs, kind="stable")
    ranked, hits = probs[order], truth[order]
    tp = np.cumsum(hits)
    flagged = np.arange(1, len(ranked) + 1)
    last = np.r_[ranked[1:] < ranked[:-1], True]  # cut only where the next score is lower (ties flag together)
    f1 = np.where(last, 2 * tp / (flagged + positives), -1.0)
    k = int(np.argmax(f1))
    below = ranked[k + 1] if k + 1 < len(ranked) else 0.0
    return float((ranked[k] + below) / 2), float(f1[k])


def speech_metrics(ctc_logits: np.ndarray, lengths: np.ndarray, labels: np.ndarray, error_logits: np.ndarray,
                   error_labels: np.ndarray, threshold: float = 0.5,
                   acoustic_logits: np.ndarray | None = None) -> dict[str, float]:
    """PER over the clips and error-detection metrics over the valid canonical phonemes (labels -100 = padding):
    precision/recall/F1 of the flags ``p > threshold``, the threshold-free average precision (``error_ap``,
    AUC-PR), and the threshold with the best F1 on this split (``error_best_threshold``, ``error_best_f1``).
    With ``acoustic_logits`` (a recogniser that reads the canonical phonemes) also ``audio_only_per``: the PER of
    its audio-only CTC layer."""
    from sklearn.metrics import average_precision_score

    references = [[int(t) for t in row if t >= 0] for row in labels]

    def per(logits) -> float:
        predictions = [greedy_decode(logits[i], int(lengths[i])) for i in range(len(labels))]
        return PhonemeErrorRate().compute(predictions=predictions, references=references)["per"]

    out = {"per": per(ctc_logits)}
    if acoustic_logits is not None:
        out["audio_only_per"] = per(acoustic_logits)
    valid = error_labels >= 0
    probs = error_probabilities(error_logits[valid])
    preds = error_flags(error_logits[valid], threshold).astype(np.int64)
    truth = error_labels[valid].astype(np.int64)
    binary = classification_metrics(preds, truth, average="binary")
    weighted = classification_metrics(preds, truth, average="weighted")
    out.update({f"error_{k}": v for k, v in binary.items()})
    out["error_weighted_f1"] = weighted["f1"]
    out["error_ap"] = float(average_precision_score(truth, probs)) if truth.any() else 0.0
    out["error_best_threshold"], out["error_best_f1"] = best_threshold(probs, truth)
    out["error_threshold"] = float(threshold)
    return out
