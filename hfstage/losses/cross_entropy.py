"""Cross-entropy with optional label smoothing, for binary and multi-class logits.

When to use: the default objective of classification. Label smoothing (Szegedy et al., 2016) mixes
the one-hot target with the uniform distribution, ``q = (1 - eps) * onehot + eps / K``, which keeps
logits from growing without bound and usually helps calibration; the binary case uses K = 2, i.e.
targets ``y * (1 - eps) + eps / 2`` with binary cross-entropy on one logit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hfstage.losses.base import LOSSES, StageLoss, logits_of


def as_binary_logits(logits: torch.Tensor) -> torch.Tensor | None:
    """Return ``(N,)`` logits when ``logits`` hold one binary logit per sample, else None."""
    if logits.ndim == 1:
        return logits
    if logits.ndim == 2 and logits.shape[1] == 1:
        return logits[:, 0]
    return None


@LOSSES.register("cross_entropy")
class CrossEntropyLoss(StageLoss):
    """``-sum_k q_k log p_k`` averaged over the batch, with ``q`` the (smoothed) target distribution."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, outputs, labels: torch.Tensor, **targets) -> torch.Tensor:
        logits = logits_of(outputs)
        binary = as_binary_logits(logits)
        if binary is not None:
            targets = labels.float() * (1 - self.label_smoothing) + self.label_smoothing / 2
            return F.binary_cross_entropy_with_logits(binary.float(), targets)
        if labels.is_floating_point() and labels.shape == logits.shape:  # class distributions (mixup/cutmix)
            return F.cross_entropy(logits.float(), labels.float(), label_smoothing=self.label_smoothing)
        return F.cross_entropy(logits.float(), labels.long(), label_smoothing=self.label_smoothing)
