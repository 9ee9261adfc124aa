"""Local `evaluate` metric modules (the Hub's metric scripts are not reachable offline).

Each metric is an ``evaluate.Metric`` subclass living in this package, so it works with
``evaluate.combine`` and the rest of the `evaluate` API without a download.
"""

from hfstage.metrics.classification import (
    F1,
    Accuracy,
    Precision,
    Recall,
    classification_metrics,
)

__all__ = ["Accuracy", "F1", "Precision", "Recall", "classification_metrics"]
