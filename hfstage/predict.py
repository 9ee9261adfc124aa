"""``hfstage predict RUN [RUN ...] --images DIR [--tta N] [--proba] --out submission.csv``.

Every model of every run is averaged (a k-fold run contributes each fold's best stage, a plain run its
best stage, a stage folder itself; ``hf://`` references too), each with test-time augmentation: the
mean of the softmax probabilities over the first N views of this fixed list:

    1 identity            2-5 the image shifted by 6 % of its side up / down / left / right
    6 zoom (1.15x, centre crop)    7 horizontal flip    8 zoom + horizontal flip

so ``--tta 6`` or less never flips (digits, text), and ``--tta 8`` is the full set. The CSV has ``id``
(the file name without extension) and ``label`` (the class name), plus one ``p_<class>`` column per
class with ``--proba``; ``final_results.json`` beside it records the models, their CV scores, the TTA
and, when the folder has class sub-folders, the accuracy.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from hfstage.checkpoint import atomic_write_json, atomic_write_text
from hfstage.errors import CheckpointError, ConfigError
from hfstage.hub.refs import is_reference
from hfstage.resolve import Checkpoint, fold_checkpoints, resolve_checkpoint
from hfstage.run_dir import RunDir

logger = logging.getLogger("hfstage")

TTA_VIEWS = ("identity", "shift_up", "shift_down", "shift_left", "shift_right", "zoom", "hflip", "zoom_hflip")


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift a batch (B, C, H, W) by (dy, dx) pixels, repeating the edge."""
    p = max(abs(dy), abs(dx))
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    h, w = x.shape[-2:]
    return padded[..., p - dy: p - dy + h, p - dx: p - dx + w]


def _zoom(x: torch.Tensor, factor: float = 1.15) -> torch.Tensor:
    h, w = x.shape[-2:]
    big = F.interpolate(x, size=(round(h * factor), round(w * factor)), mode="bilinear", align_corners=False)
    top, left = (big.shape[-2] - h) // 2, (big.shape[-1] - w) // 2
    return big[..., top: top + h, left: left + w]


def tta_view(x: torch.Tensor, name: str) -> torch.Tensor:
    s = max(1, round(0.06 * x.shape[-1]))
    return {
        "identity": lambda: x,
        "shift_up": lambda: _shift(x, -s, 0),
        "shift_down": lambda: _shift(x, s, 0),
        "shift_left": lambda: _shift(x, 0, -s),
        "shift_right": lambda: _shift(x, 0, s),
        "zoom": lambda: _zoom(x),
        "hflip": lambda: x.flip(-1),
        "zoom_hflip": lambda: _zoom(x).flip(-1),
    }[name]()


def expand_models(references: list[str]) -> list[tuple[str, Checkpoint]]:
    """(reference, Checkpoint) per model: a k-fold run expands to its folds' best stages."""
    models = []
    for ref in references:
        folded = fold_checkpoints(ref)
        if folded is not None:
            models += [(str(c.stage_dir.parent), c) for c in folded[0]]
        else:
            models.append((ref, resolve_checkpoint(ref)))
    return models


def predict_images(references: list[str], images: str | Path, out: str | Path, tta: int = 1, proba: bool = False,
                   batch_size: int = 256) -> dict:
    """Average every model (and TTA view) over the images; write the submission CSV and final_results.json."""
    from accelerate import Accelerator

    from hfstage.data.images import (
        ImageCollator,
        ImageDataset,
        image_transform,
        load_image_list,
    )
    from hfstage.devices import cpu_only
    from hfstage.models import load_saved_config

    if not 1 <= tta <= len(TTA_VIEWS):
        raise ConfigError(f"--tta {tta}: must be 1 to {len(TTA_VIEWS)} (views: {', '.join(TTA_VIEWS)})")
    models = expand_models(references)
    configs = [load_saved_config(c.stage_dir) for _, c in models]
    for (ref, c), config in zip(models, configs):
        if c.task != "image_classification":
            raise CheckpointError(f"{ref}: a {c.task} model; --images needs image_classification models")
    classes = [configs[0].id2label[i] for i in range(configs[0].num_labels)]
    for (ref, _), config in zip(models, configs):
        if [config.id2label[i] for i in range(config.num_labels)] != classes:
            raise CheckpointError(f"{ref}: its classes differ from {models[0][0]}'s; models to average must share them")
    listed = load_image_list(Path(images), "--images", classes, labelled=False)
    dataset = ImageDataset(listed)
    accelerator = Accelerator(cpu=cpu_only())
    began = time.time()
    total = np.zeros((len(dataset), len(classes)), dtype=np.float64)
    views = TTA_VIEWS[:tta]
    for (ref, checkpoint), config in zip(models, configs):
        model = checkpoint.load_model().eval().to(accelerator.device)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                            collate_fn=ImageCollator(image_transform(config, training=False)))
        probs = []
        with torch.no_grad():
            for batch in loader:
                x = batch["pixel_values"].to(accelerator.device)
                p = sum(torch.softmax(model(pixel_values=tta_view(x, v)).logits.float(), dim=-1) for v in views)
                probs.append((p / len(views)).cpu().numpy())
        total += np.concatenate(probs)
        logger.info("predicted %d images with %s (%d TTA view(s))", len(dataset), ref, len(views))
    probs = total / len(models)
    preds = probs.argmax(axis=1)
    ids = dataset.ids
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id", "label"] + ([f"p_{c}" for c in classes] if proba else []))
    for i, pred, row in zip(ids, preds, probs):
        writer.writerow([i, classes[pred]] + ([f"{v:.6f}" for v in row] if proba else []))
    out = Path(out)
    atomic_write_text(out, buf.getvalue())
    result = {
        "submission": str(out), "images": str(images), "samples": len(dataset), "skipped_images": dataset.skipped,
        "tta": list(views), "models": [ref for ref, _ in models],
        "cv": {ref: {k: v for k, v in cv.items() if k != "config"}
               for ref in references if not is_reference(ref) and (cv := RunDir(ref).load_cv()) is not None},
        "seconds": round(time.time() - began, 3), "predicted_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    labelled = dataset.y >= 0
    if labelled.all():
        result["accuracy"] = float((preds == dataset.y).mean())
    atomic_write_json(out.with_name("final_results.json"), result)
    return result
