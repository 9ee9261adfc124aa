"""Training losses, one per module, registered by name (``losses/base.py`` holds the registry and the
one call convention, ``loss(outputs, labels, **targets)``).

Logits of shape ``(N,)`` (or ``(N, 1)``) are one binary logit per sample with labels in {0, 1}; logits of
shape ``(N, C)`` are C-class scores with integer labels.
"""

from hfstage.losses import arcface, cross_entropy, focal, speech  # noqa: F401  (registers the losses)
from hfstage.losses.base import LOSSES, StageLoss, build_loss, describe, loss_spec
from hfstage.losses.cross_entropy import CrossEntropyLoss
from hfstage.losses.distillation import DistillationLoss

__all__ = ["LOSSES", "CrossEntropyLoss", "DistillationLoss", "StageLoss", "build_loss", "describe", "loss_spec"]
