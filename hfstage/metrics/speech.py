"""Speech metrics: phoneme error rate (PER) from greedy CTC decoding, and mispronunciation detection
(accuracy, precision, recall, F1 of the mispronounced class, and F1 weighted over both classes), as
local ``evaluate`` metric modules so they work offline."""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

from hfstage.metrics.classification import classification_metrics
from hfstage.metrics.recognition import (PER_KEYS, Feedback, edit_distance, feedback,  # noqa: F401  (API)
                                        greedy_decode, mdd_metrics, phoneme_error_rate)


class PhonemeErrorRate(evaluate.Metric):
    """Total edit distance over total reference length (not a mean of per-clip rates)."""

    def _info(self):
        seq = datasets.Sequence(datasets.Value("int64"))
        return evaluate.MetricInfo(description="phoneme error rate", citation="", inputs_description="id sequences",
                                   features=datasets.Features({"predictions": seq, "references": seq}))

    def _compute(self, predictions, references):
        return {"per": phoneme_error_rate(predictions, references)}


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
                   acoustic_logits: np.ndarray | None = None, canonical: np.ndarray | None = None,
                   recognizer: str | None = None, edit_penalty: float | None = None) -> dict[str, float]:
    """PER over the clips and error-detection metrics over the valid canonical phonemes (labels -100 = padding):
    precision/recall/F1 of the flags ``p > threshold``, the threshold-free average precision (``error_ap``,
    AUC-PR), and the threshold with the best F1 on this split (``error_best_threshold``, ``error_best_f1``).

    PERs: ``audio_only_per`` (the audio-only CTC layer's greedy path), ``prompted_per`` (the layer that reads the
    canonical phonemes, when the model has one: ``acoustic_logits`` are then the audio-only layer's), and with
    ``canonical`` (the canonical ids, padded like ``error_labels``) ``prompt_echo_per`` (the canonical phonemes
    returned unchanged), ``prompt_aware_per`` (the prompt-aware decoder at ``edit_penalty``, chosen here when not
    given), ``diagnosed_per`` (the canonical phonemes with the flagged ones as diagnosed; flagged at the best
    threshold of this split when the recogniser is being chosen) and the MDD figures (``diagnosis_accuracy``,
    ``false_acceptance_rate``, ``false_rejection_rate``).
    ``per`` is the PER of ``recognizer`` (metrics.recognition.RECOGNIZERS); without one, of the recogniser with
    the lowest PER here (what the end of a stage chooses on its eval split), or, without ``canonical``, of the
    model's own output layer."""
    return speech_evaluation(ctc_logits, lengths, labels, error_logits, error_labels, threshold, acoustic_logits,
                             canonical, recognizer, edit_penalty)[0]


def speech_evaluation(ctc_logits: np.ndarray, lengths: np.ndarray, labels: np.ndarray, error_logits: np.ndarray,
                      error_labels: np.ndarray, threshold: float = 0.5, acoustic_logits: np.ndarray | None = None,
                      canonical: np.ndarray | None = None, recognizer: str | None = None,
                      edit_penalty: float | None = None) -> tuple[dict[str, float], Feedback]:
    """``speech_metrics`` and the ``Feedback`` they were computed from (what was heard, the diagnoses), so a caller
    that reports both decodes once."""
    from sklearn.metrics import average_precision_score

    references = [[int(t) for t in row if t >= 0] for row in labels]
    counts = (np.asarray(error_labels) >= 0).sum(axis=1)
    cut = [np.asarray(ctc_logits[i])[: int(lengths[i])] for i in range(len(references))]
    acoustic = None if acoustic_logits is None else [np.asarray(acoustic_logits[i])[: int(lengths[i])]
                                                     for i in range(len(references))]
    prompts = None if canonical is None else [[int(t) for t in np.asarray(canonical[i])[: counts[i]]]
                                              for i in range(len(references))]
    def flags_at(t: float) -> list[np.ndarray]:  # per clip, one flag per canonical phoneme
        return [error_flags(np.asarray(error_logits[i])[: counts[i]], t) for i in range(len(references))]

    flags = flags_at(threshold)
    valid = error_labels >= 0
    probs = error_probabilities(error_logits[valid])
    truth = error_labels[valid].astype(np.int64)
    best = best_threshold(probs, truth)
    judged = None  # choosing the recogniser: `diagnosed` is judged with the flags at the threshold a stage will save
    if recognizer is None and prompts is not None and best[0] != threshold:
        judged = flags_at(best[0])
    told = feedback(cut, acoustic, prompts, flags, recognizer, edit_penalty, references, judged)
    rates = {name: phoneme_error_rate(seqs, references) for name, seqs in told.found.paths.items()}
    out = {PER_KEYS[name]: rate for name, rate in rates.items()}
    if prompts is not None:
        out["prompt_echo_per"] = phoneme_error_rate(prompts, references)
        out["edit_penalty"] = float(told.found.penalty)
    out["per"] = rates[told.chosen]
    preds = error_flags(error_logits[valid], threshold).astype(np.int64)
    binary = classification_metrics(preds, truth, average="binary")
    weighted = classification_metrics(preds, truth, average="weighted")
    out.update({f"error_{k}": v for k, v in binary.items()})
    out["error_weighted_f1"] = weighted["f1"]
    out["error_ap"] = float(average_precision_score(truth, probs)) if truth.any() else 0.0
    out["error_best_threshold"], out["error_best_f1"] = best
    out["error_threshold"] = float(threshold)
    if prompts is not None:
        out.update(mdd_metrics(prompts, references, told.diagnoses,
                               [np.asarray(error_labels[i])[: counts[i]] for i in range(len(prompts))], flags))
    return out, told
