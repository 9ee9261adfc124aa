"""Training losses, one per module, registered by name.

Every loss takes ``(logits, labels)``; a loss that needs the model (ArcFace: its cosine scale) has
``bind_model(model)``, called by the trainer. Logits of shape ``(N,)`` (or ``(N, 1)``) are one binary logit
per sample with labels in {0, 1}; logits of shape ``(N, C)`` are C-class scores with integer labels.
"""

from hfstage.registry import Registry

LOSSES: Registry = Registry("loss")

from hfstage.losses import arcface, cross_entropy, focal, speech  # noqa: E402,F401  (registers the losses)


def build_loss(stage):
    """The training loss a stage asks for, with the stage's parameters."""
    cls = LOSSES.get(stage.loss, f"stage '{stage.name}': loss")
    return cls.from_stage(stage)
