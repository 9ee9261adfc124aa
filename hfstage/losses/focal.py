"""Focal loss (Lin et al., 2017) for binary and multi-class logits.

When to use: many easy examples swamp the gradient (class imbalance, or late training where most
pairs are already right). The loss down-weights well-classified samples:

    FL = alpha * (1 - p_t) ** gamma * CE

where ``p_t`` is the predicted probability of the true class and CE the (optionally label-smoothed)
cross-entropy of the sample. ``gamma = 0`` and ``alpha = 1`` give plain cross-entropy. ``alpha`` is
a plain multiplier (the recipes use alpha=1, gamma=2), not RetinaNet's class-balance weight.
In a recipe: ``loss: {type: focal, alpha: 1.0, gamma: 2.0}``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hfstage.arguments import NON_NEGATIVE, POSITIVE
from hfstage.losses.base import LOSSES, StageLoss, logits_of
from hfstage.losses.cross_entropy import as_binary_logits


@LOSSES.register("focal")
class FocalLoss(StageLoss):
    """``alpha * (1 - p_t)^gamma * CE`` averaged over the batch."""

    checks = {"alpha": POSITIVE, "gamma": NON_NEGATIVE}

    def __init__(self, alpha: float = 1.0, gamma: float = 2.0, label_smoothing: float = 0.0):
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma
        self.label_smoothing = label_smoothing

    def forward(self, outputs, labels: torch.Tensor, **targets) -> torch.Tensor:
        logits = logits_of(outputs)
        eps = self.label_smoothing
        binary = as_binary_logits(logits)
        if binary is not None:
            binary = binary.float()
            y = labels.float()
            targets = y * (1 - eps) + eps / 2
            ce = F.binary_cross_entropy_with_logits(binary, targets, reduction="none")
            p = torch.sigmoid(binary)
            p_t = p * y + (1 - p) * (1 - y)
        else:
            logits = logits.float()
            ce = F.cross_entropy(logits, labels.long(), label_smoothing=eps, reduction="none")
            p_t = torch.softmax(logits, dim=-1).gather(1, labels.long()[:, None])[:, 0]
        return (self.alpha * (1 - p_t).pow(self.gamma) * ce).mean()
