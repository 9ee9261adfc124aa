import numpy as np
import pytest

from hfstage.metrics import classification_metrics


def test_binary_by_hand():
    preds = [1, 1, 0, 0, 1, 0]
    refs = [1, 0, 0, 1, 1, 0]
    # tp=2 fp=1 fn=1 tn=2
    m = classification_metrics(preds, refs)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)


def test_binary_no_positive_predictions():
    m = classification_metrics([0, 0, 0], [1, 0, 1])
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["accuracy"] == pytest.approx(1 / 3)


def test_macro_matches_sklearn_definition():
    rng = np.random.default_rng(0)
    preds, refs = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    m = classification_metrics(preds, refs, average="macro")
    f1s = []
    for c in range(4):
        tp = np.sum((preds == c) & (refs == c))
        p = tp / max(np.sum(preds == c), 1)
        r = tp / max(np.sum(refs == c), 1)
        f1s.append(0 if p + r == 0 else 2 * p * r / (p + r))
    assert m["f1"] == pytest.approx(np.mean(f1s))
    assert m["accuracy"] == pytest.approx(np.mean(preds == refs))
