"""The multi-task loss of pronunciation assessment:

    ctc_weight * CTC(phonemes spoken) + error_weight * (weighted BCE or focal)(mispronounced per canonical phoneme)

CTC (Graves et al., 2006) aligns the frame-level phoneme logits to the phonemes actually spoken without
a forced alignment; the error term is a binary loss over the canonical phonemes (padding ignored).
``pos_weight`` up-weights the rarer mispronounced phonemes; ``error_loss: focal`` uses
``focal_alpha * (1 - p_t)^focal_gamma * BCE`` instead. ``eval_loss`` is the same sum with weights 1
and plain BCE, so stages with different weights are compared on one scale. In a recipe:
``loss: {type: ctc_mispronunciation, error_weight: 2.0, pos_weight: 2.0}``; ``pos_weight: auto`` is the
training split's ratio of correct to mispronounced phonemes (resolved when the stage starts). A model that
recognises with the canonical phonemes in view (``ctc_context: canonical``) also returns its audio-only CTC
layer's logits (``acoustic_logits``); the CTC term is then the sum over both layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hfstage.arguments import NON_NEGATIVE, POSITIVE
from hfstage.losses.base import LOSSES, StageLoss


@LOSSES.register("ctc_mispronunciation")
class CTCMispronunciationLoss(StageLoss):
    """``ctc_weight * CTC + error_weight * (weighted BCE or focal)`` of the mispronounced canonical phonemes."""

    label_keys = ("error_labels",)
    bound_from_model = ("blank",)  # the vocabulary's padding token, never a recipe's choice
    checks = {"ctc_weight": NON_NEGATIVE, "error_weight": NON_NEGATIVE,
              "pos_weight": (lambda v: v == "auto" or (not isinstance(v, str) and v > 0), "must be > 0 or auto"),
              "focal_alpha": POSITIVE, "focal_gamma": NON_NEGATIVE,
              "error_loss": (lambda v: v in ("bce", "focal"), "must be bce or focal")}

    def __init__(self, ctc_weight: float = 1.0, error_weight: float = 1.0, error_loss: str = "bce",
                 pos_weight: float | str = 1.0, focal_alpha: float = 1.0, focal_gamma: float = 2.0, blank: int = 0):
        super().__init__()
        self.ctc_weight, self.error_weight, self.error_loss = ctc_weight, error_weight, error_loss
        self.pos_weight, self.focal_alpha, self.focal_gamma, self.blank = pos_weight, focal_alpha, focal_gamma, blank

    def evaluation(self) -> CTCMispronunciationLoss:
        return CTCMispronunciationLoss(blank=self.blank)

    def ctc(self, logits: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (T, B, V)
        valid = labels >= 0
        targets = labels.masked_fill(~valid, 0)
        return F.ctc_loss(log_probs, targets, lengths, valid.sum(-1), blank=self.blank, reduction="mean",
                          zero_infinity=True)

    def errors(self, error_logits: torch.Tensor, error_labels: torch.Tensor) -> torch.Tensor:
        valid = error_labels >= 0
        z, y = error_logits.float()[valid], error_labels.float()[valid]
        if self.error_loss == "focal":
            bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
            p = torch.sigmoid(z)
            p_t = p * y + (1 - p) * (1 - y)
            return (self.focal_alpha * (1 - p_t).pow(self.focal_gamma) * bce).mean()
        return F.binary_cross_entropy_with_logits(z, y, pos_weight=torch.tensor(self.pos_weight, device=z.device))

    def forward(self, outputs, labels: torch.Tensor, error_labels: torch.Tensor) -> torch.Tensor:
        ctc = self.ctc(outputs["logits"], outputs["output_lengths"], labels)
        if outputs.get("acoustic_logits") is not None:  # a prompted recogniser keeps its audio-only CTC layer too
            ctc = ctc + self.ctc(outputs["acoustic_logits"], outputs["output_lengths"], labels)
        return self.ctc_weight * ctc + self.error_weight * self.errors(outputs["error_logits"], error_labels)

    def distillation_logits(self, outputs, student_outputs, error_labels: torch.Tensor) -> list[torch.Tensor]:
        """The phoneme scores of every real frame (``(frames, V)``) and the error logit of every canonical
        phoneme (``(phonemes,)``): a teacher's frame posteriors and error probabilities are both distilled."""
        logits = outputs["logits"]
        lengths = student_outputs["output_lengths"].to(logits.device)
        frames = torch.arange(logits.shape[1], device=logits.device)[None, :] < lengths[:, None]
        return [logits[frames], outputs["error_logits"][error_labels >= 0]]
