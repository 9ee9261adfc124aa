"""ArcFace additive angular margin (Deng et al., 2019) over a cosine classifier.

When to use: many similar classes (faces, fine-grained images, signs) where a plain softmax leaves
classes close together. The model's classifier must be a cosine head (``model.head: cosine``): its
logits are ``s * cos(theta_j)``, the scaled cosine between the normalised features and class weights.
In training the target class's angle gets a margin ``m``:

    logit_y = s * cos(theta_y + m)      (when theta_y + m > pi: s * (cos(theta_y) - m * sin(m)))

and the loss is cross-entropy over these logits. At inference nothing changes: the model's own
logits ``s * cos(theta)`` are the prediction, so evaluation and ``eval_loss`` use them as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hfstage.errors import ConfigError
from hfstage.losses.base import LOSSES, StageLoss, logits_of


@LOSSES.register("arcface")
class ArcFaceLoss(StageLoss):
    """Cross-entropy over ``s * cos(theta + m)`` for the target class; ``loss: {type: arcface, margin: 0.5}``."""

    bound_from_model = ("scale",)  # the cosine head's own scale
    checks = {"margin": (lambda v: 0 <= v < 1.5, "must be in [0, 1.5)")}

    def __init__(self, margin: float = 0.5, scale: float | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.margin = margin
        self.scale = scale
        self.label_smoothing = label_smoothing

    def bind_model(self, model) -> None:
        """Take the cosine head's scale ``s`` from the model being trained."""
        if getattr(model.config, "head", None) != "cosine":
            raise ConfigError("loss arcface needs a cosine classifier: set model.head: cosine")
        self.scale = float(model.config.cosine_scale)

    def forward(self, outputs, labels: torch.Tensor, **targets) -> torch.Tensor:
        logits = logits_of(outputs)
        if self.scale is None:
            raise ConfigError("loss arcface: the model's cosine scale is unknown (bind_model was not called)")
        s, m = self.scale, self.margin
        cos = (logits.float() / s).clamp(-1 + 1e-7, 1 - 1e-7)
        target = cos.gather(1, labels.long()[:, None])
        sin = torch.sqrt(1 - target**2)
        with_margin = target * math.cos(m) - sin * math.sin(m)  # cos(theta + m)
        # past theta = pi - m, cos(theta + m) would grow again: use the linear fallback of the paper
        with_margin = torch.where(target > math.cos(math.pi - m), with_margin, target - m * math.sin(m))
        adjusted = cos.scatter(1, labels.long()[:, None], with_margin)
        return F.cross_entropy(s * adjusted, labels.long(), label_smoothing=self.label_smoothing)
