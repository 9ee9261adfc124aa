"""Knowledge distillation (Hinton et al., 2015): learn from a teacher's softened predictions.

When to use: a stage that compresses a strong model (or an ensemble's best stage) into the one being
trained, or that polishes a model with a teacher's "dark knowledge" about which classes look alike:

    loss = (1 - alpha) * hard_loss(student, labels) + alpha * T^2 * sum_parts KL(softmax(teacher / T) || softmax(student / T))

``T^2`` keeps the soft term's gradients on the scale of the hard term. The hard loss is the stage's own
loss, whichever it is (one call convention); it also says what is distilled
(``StageLoss.distillation_logits``): the class scores of a classifier, or for speech the phoneme scores
of every frame and the error logit of every canonical phoneme. One binary logit ``z`` is treated as the
two-class logits ``[0, z]``. In a recipe: ``teacher: {checkpoint: runs/big, temperature: 4, alpha: 0.5}``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hfstage.arguments import POSITIVE
from hfstage.losses.base import StageLoss
from hfstage.losses.cross_entropy import as_binary_logits


def two_class(logits: torch.Tensor) -> torch.Tensor:
    binary = as_binary_logits(logits)
    if binary is None:
        return logits.float()
    return torch.stack([torch.zeros_like(binary), binary], dim=1).float()


class DistillationLoss(StageLoss):
    checks = {"temperature": POSITIVE, "alpha": (lambda v: 0 <= v <= 1, "must be in [0, 1]")}

    def __init__(self, hard_loss: StageLoss, temperature: float = 4.0, alpha: float = 0.5):
        super().__init__()
        self.hard_loss = hard_loss
        self.temperature = temperature
        self.alpha = alpha

    @property
    def label_keys(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.hard_loss.label_keys

    def evaluation(self) -> StageLoss | None:
        return self.hard_loss.evaluation()

    def bind_model(self, model) -> None:
        self.hard_loss.bind_model(model)

    def forward(self, outputs, labels: torch.Tensor, teacher_outputs, **targets) -> torch.Tensor:
        t = self.temperature
        student = self.hard_loss.distillation_logits(outputs, outputs, **targets)
        teacher = self.hard_loss.distillation_logits(teacher_outputs, outputs, **targets)
        soft = 0.0
        for s, q in zip(student, teacher):
            if s.shape != q.shape:
                raise ValueError(f"the teacher's scores have shape {tuple(q.shape)} but the model's have {tuple(s.shape)}")
            if len(s):
                log_s = F.log_softmax(two_class(s) / t, dim=-1)
                log_q = F.log_softmax(two_class(q) / t, dim=-1)
                soft = soft + F.kl_div(log_s, log_q, log_target=True, reduction="batchmean") * t * t
        return (1 - self.alpha) * self.hard_loss(outputs, labels, **targets) + self.alpha * soft
