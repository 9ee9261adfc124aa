"""Knowledge distillation (Hinton et al., 2015): learn from a teacher's softened predictions.

When to use: a stage that compresses a strong model (or an ensemble's best stage) into the one being
trained, or that polishes a model with a teacher's "dark knowledge" about which classes look alike:

    loss = (1 - alpha) * hard_loss(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

``T^2`` keeps the soft term's gradients on the scale of the hard term. One binary logit ``z`` is
treated as the two-class logits ``[0, z]``. The hard loss is the stage's own loss (cross-entropy or
focal, with its label smoothing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hfstage.losses.cross_entropy import as_binary_logits


def two_class(logits: torch.Tensor) -> torch.Tensor:
    binary = as_binary_logits(logits)
    if binary is None:
        return logits.float()
    return torch.stack([torch.zeros_like(binary), binary], dim=1).float()


class DistillationLoss(nn.Module):
    def __init__(self, hard_loss: nn.Module, temperature: float = 4.0, alpha: float = 0.5):
        super().__init__()
        self.hard_loss = hard_loss
        self.temperature = temperature
        self.alpha = alpha

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        student = F.log_softmax(two_class(logits) / t, dim=-1)
        teacher = F.log_softmax(two_class(teacher_logits) / t, dim=-1)
        soft = F.kl_div(student, teacher, log_target=True, reduction="batchmean") * t * t
        return (1 - self.alpha) * self.hard_loss(logits, labels) + self.alpha * soft
