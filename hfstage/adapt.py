"""Train -> test domain adaptation as stages, on the unlabelled target images of ``data.unlabeled_file``.

- ``augmentation: {match_target: P}``: before the stage trains, the shift from the training images to the
  target's (brightness, contrast, blur, noise; ``hfstage.data.shift``) is fitted as a degradation, and a
  fraction P of the training images (``true`` = all) is degraded toward the target, a random 0.5-1.5 of
  the way. The fitted parameters go into the stage's ``stage.json`` (``match_target``).
- ``kind: adabn``: no gradient steps; the model's BatchNorm statistics (running mean and variance) are
  re-estimated on the target images (AdaBN, Li et al. 2016), every weight left as it was. Kept or not by
  the usual rule; point ``data.eval_file`` at a labelled sample of the target domain when one exists,
  since the training domain's eval split cannot see the benefit.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hfstage.errors import ConfigError
from hfstage.pseudo import require_unlabeled_images
from hfstage.surgery import batchnorm_layers

logger = logging.getLogger("hfstage")

FIT_IMAGES = 48  # training images the degradation is fitted on
TARGET_IMAGES = 1000  # target images whose statistics it is fitted to (a seeded sample)
FIT_CROP = 160  # larger images are fitted on a central crop of this size (blur and noise are local)
# what an adabn stage reads of its settings; a set training-only option is refused by name
ADABN_REFUSED = ("augmentation", "class_augmentation", "pseudo_labels", "teacher", "freeze_patterns",
                 "freeze_batchnorm", "train_on_eval")


def uses_target(stage) -> bool:
    return bool(stage.augmentation.get("match_target")) or stage.kind == "adabn"


def check_domain_adaptation(cfg, task, stage, where: str) -> None:
    """``match_target`` and ``kind: adabn`` need an image task with a local folder of target images."""
    if not uses_target(stage):
        return
    what = "kind: adabn" if stage.kind == "adabn" else "augmentation.match_target"
    require_unlabeled_images(cfg, task, f"{where}.{what}", "domain adaptation stages", "of the target domain")
    if stage.kind == "adabn":
        from hfstage.config import StageConfig

        blank = StageConfig(name=stage.name)
        for name in ADABN_REFUSED:
            if getattr(stage, name) != getattr(blank, name):
                raise ConfigError(f"{where}.{name}: a kind: adabn stage takes no gradient steps, so {name} would be "
                                  "ignored; remove it (or use a training stage)")


def check_adabn_model(model: nn.Module, where: str, what: str = "kind: adabn") -> None:
    if not batchnorm_layers(model):
        field = what.split(":")[0]
        raise ConfigError(f"{where}.{field}: {what} acts on BatchNorm statistics, and this model has no BatchNorm "
                          "layer with running statistics")


def target_images(cfg, task):
    return task.load_unlabeled(Path(cfg.data.path) / cfg.data.unlabeled_file, "data.unlabeled_file")


def _as_array(image) -> np.ndarray:
    from hfstage.data.shift import as_rgb

    rgb = as_rgb(image)
    h, w = rgb.shape[:2]
    if max(h, w) > FIT_CROP:
        top, left = max(0, (h - FIT_CROP) // 2), max(0, (w - FIT_CROP) // 2)
        rgb = rgb[top:top + FIT_CROP, left:left + FIT_CROP]
    return rgb


def fit_target_match(cfg, task, stage, train) -> tuple[dict, dict]:
    """(degradation parameters, stage.json record) moving the training images toward the target's statistics."""
    from hfstage.data import shift

    began = time.time()
    target = target_images(cfg, task)
    rng = np.random.default_rng(cfg.seed)
    chosen = np.sort(rng.permutation(len(target))[:TARGET_IMAGES])
    target_stats = shift.statistics_of(_as_array(target[int(i)]["image"]) for i in chosen)
    sample = np.sort(rng.permutation(len(train))[:FIT_IMAGES])
    fitted = shift.fit_degradation([_as_array(train[int(i)]["image"]) for i in sample], target_stats, seed=cfg.seed)
    probability = float(stage.augmentation["match_target"])
    record = {"probability": probability, "strength_range": [0.5, 1.5], "target_images": len(chosen),
              "fit_images": len(sample), "fit_seconds": round(time.time() - began, 2), **fitted}
    logger.info("match_target: training images degraded toward %s with probability %g: gain %.3g, offset %+.3g, "
                "blur sigma %.3g px, noise sd %.3g (medians reached: %s)", cfg.data.unlabeled_file, probability,
                fitted["gain"], fitted["offset"], fitted["blur"], fitted["noise"],
                ", ".join(f"{k} {v:.3g}/{fitted['target_medians'][k]:.3g}" for k, v in fitted["reached_medians"].items()))
    return fitted, record


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader) -> dict:
    """Replace every BatchNorm layer's running mean and variance with the statistics of ``loader``'s inputs
    (a cumulative average over all its batches); nothing else in the model changes. Returns a record."""
    layers = batchnorm_layers(model)
    momenta = [m.momentum for m in layers]
    was_training = model.training
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the exact mean over batches
        m.train()
    device = next(model.parameters()).device
    images = batches = 0
    try:
        for batch in loader:
            batch.pop("labels", None)
            model(**{k: v.to(device) for k, v in batch.items()})
            images += len(next(iter(batch.values())))
            batches += 1
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.train(was_training)
    return {"batchnorm_layers": len(layers), "target_images": images, "batches": batches}
