"""Paired images in ``.npz`` files: ``x`` (N, 2, H, W) and ``y`` (N,) with 1 = the pair matches.

``x`` is uint8 (0-255) or float in [0, 1]; it stays in its stored dtype in memory and is converted to
float once per batch by :class:`PairCollator`, which also applies the stage's augmentations to the
whole batch at once (one ``grid_sample`` call), so loading is never the bottleneck.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from hfstage.data import check_augmentation, first_non_finite, read_npz
from hfstage.errors import DataError
from hfstage.registry import Registry

REQUIRED_KEYS = ("x", "y")


def load_pair_arrays(path: str | Path, field: str = "data") -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one pair split; every problem names the file and the key."""
    path = Path(path)
    arrays = read_npz(path, field, REQUIRED_KEYS)
    x, y = arrays["x"], arrays["y"]
    n = len(x)
    if x.ndim != 4 or x.shape[1] != 2:
        raise DataError(f"{path}: key 'x' must have shape (N, 2, H, W), got {tuple(x.shape)}")
    if n == 0:
        raise DataError(f"{path}: key 'x' is empty (the split has no samples)")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.floating):
            raise DataError(f"{path}: key 'x' must be uint8 or float, got {x.dtype}")
        x = x.astype(np.float32, copy=False)
        bad = first_non_finite(x)
        if bad is not None:
            raise DataError(f"{path}: key 'x' holds NaN or Inf (first at sample {bad})")
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{path}: key 'y' must have shape ({n},) to match 'x', got {tuple(y.shape)}")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating) or y.dtype == bool):
        raise DataError(f"{path}: key 'y' must hold integers 0/1, got {y.dtype}")
    if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
        raise DataError(f"{path}: key 'y' holds NaN or Inf")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{path}: key 'y' must be 0 or 1; sample {i} has {y[i].item()!r}")
    return x, y.astype(np.int64)


class PairDataset(Dataset):
    """Pairs held as tensors; ``__getitems__`` returns a whole batch with one indexing operation."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x = torch.from_numpy(np.ascontiguousarray(x))
        self.y = torch.from_numpy(np.ascontiguousarray(y))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}

    def __getitems__(self, indices):
        index = torch.as_tensor(indices, dtype=torch.long)
        return {"pixel_values": self.x[index], "labels": self.y[index]}

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.x.shape[-2:])


# --------------------------------------------------------------------------------------------------
# Augmentations: each a (strength) -> batch transform; all apply to the two images independently.

PAIR_AUGMENTATIONS: Registry = Registry("pair augmentation")
PAIR_AUGMENTATIONS.register("shift")("Random translation, at most this fraction of the image size.")
PAIR_AUGMENTATIONS.register("rotate")("Random rotation, at most this many degrees either way.")
PAIR_AUGMENTATIONS.register("scale")("Random zoom by a factor in [1 - s, 1 + s].")
PAIR_AUGMENTATIONS.register("noise")("Gaussian pixel noise with this standard deviation.")
PAIR_AUGMENTATIONS.register("swap")("Probability of swapping the two images (the label is symmetric).")

_LIMITS = {"shift": (0, 0.5), "rotate": (0, 180), "scale": (0, 0.5), "noise": (0, 1), "swap": (0, 1)}


def check_pair_augmentation(augmentation: dict[str, float], where: str) -> None:
    check_augmentation(PAIR_AUGMENTATIONS, _LIMITS, augmentation, where)


def augment_pairs(x: torch.Tensor, aug: dict[str, float]) -> torch.Tensor:
    """Apply the augmentations to a float batch (B, 2, H, W) in [0, 1]."""
    b, _, h, w = x.shape
    n = b * 2
    if any(aug.get(k, 0) for k in ("shift", "rotate", "scale")):
        angle = (torch.rand(n) * 2 - 1) * math.radians(aug.get("rotate", 0.0))
        scale = 1 + (torch.rand(n) * 2 - 1) * aug.get("scale", 0.0)
        shift = (torch.rand(n, 2) * 2 - 1) * aug.get("shift", 0.0) * 2  # grid units span 2
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, (n, 1, h, w), align_corners=False)
        x = F.grid_sample(x.reshape(n, 1, h, w), grid, align_corners=False, padding_mode="zeros").reshape(b, 2, h, w)
    if aug.get("noise", 0):
        x = (x + torch.randn_like(x) * aug["noise"]).clamp_(0, 1)
    if aug.get("swap", 0):
        flip = torch.rand(b) < aug["swap"]
        x = torch.where(flip[:, None, None, None], x.flip(1), x)
    return x


class PairCollator:
    """Turns a batch (already gathered by ``PairDataset.__getitems__``) into model inputs."""

    def __init__(self, augmentation: dict[str, float] | None = None):
        self.augmentation = {k: v for k, v in (augmentation or {}).items() if v}

    def __call__(self, batch) -> dict[str, torch.Tensor]:
        if isinstance(batch, list):  # a sampler that fetches one item at a time
            batch = {k: torch.stack([item[k] for item in batch]) for k in batch[0]}
        x = batch["pixel_values"]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if self.augmentation:
            x = augment_pairs(x, self.augmentation)
        return {"pixel_values": x, "labels": batch["labels"]}
