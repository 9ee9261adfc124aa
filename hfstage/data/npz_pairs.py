"""Paired images: ``.npz`` files with ``x`` (N, 2, H, W) and ``y`` (N,) (1 = the pair matches), or any
``datasets`` source with a ``pair`` column (2 x H x W per row) or two image columns ``image_a``/``image_b``,
and a ``label`` column (``data.columns`` maps these fields to other column names).

Images are uint8 (0-255) or float in [0, 1]; they stay in their stored dtype, memory-mapped from the
``datasets`` cache, and are converted to float once per batch by :class:`PairCollator`, which also applies
the stage's augmentations to the whole batch at once (one ``grid_sample`` call), so loading is never the
bottleneck.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from hfstage.data import check_augmentation, first_non_finite, read_npz
from hfstage.data.arrow import ArrayColumn, InMemoryColumn, scalar_column
from hfstage.data.sources import column_of, converted
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
    return x, check_binary_labels(y, f"{path}: key 'y'")


def check_binary_labels(y: np.ndarray, where: str) -> np.ndarray:
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{where} must be 0 or 1; sample {i} has {y[i].item()!r}")
    return y.astype(np.int64)


def npz_as_dataset(path: str | Path, field: str = "data"):
    """A pair ``.npz`` file as a ``datasets.Dataset`` (``pair``, ``label``), converted once into the cache."""
    import datasets

    def build():
        x, y = load_pair_arrays(path, field)
        features = datasets.Features({"pair": datasets.Array3D(tuple(x.shape[1:]), str(x.dtype)),
                                      "label": datasets.Value("int64")})
        return datasets.Dataset.from_dict({"pair": x, "label": y}, features=features)

    return converted(Path(path), "pairs", build, field)



class _TwoImages:
    """``image_a`` and ``image_b`` columns (H x W each) read as one pair column."""

    def __init__(self, a: ArrayColumn, b: ArrayColumn, where: str):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise DataError(f"{where}: image_a and image_b differ ({a.shape} {a.dtype} vs {b.shape} {b.dtype})")
        self.a, self.b = a, b
        self.shape, self.dtype = (2, *a.shape), a.dtype

    def gather(self, indices) -> np.ndarray:
        return np.stack([self.a.gather(indices), self.b.gather(indices)], axis=1)

    def blocks(self):
        for a, b in zip(self.a.blocks(), self.b.blocks()):
            yield np.stack([a, b], axis=1)


class PairDataset(Dataset):
    """Pairs and their labels; ``__getitems__`` returns a whole batch with one gather.

    Built from arrays in memory (``PairDataset(x, y)``) or from a ``datasets.Dataset``
    (``PairDataset.from_dataset``), whose columns stay memory-mapped: every process reads only its batches.
    """

    def __init__(self, x, y: np.ndarray, limit: int | None = None):
        self.images = x if hasattr(x, "gather") else InMemoryColumn(x)
        self.y = torch.from_numpy(np.array(y[:limit], dtype=np.int64))  # a copy: labels are small

    @classmethod
    def from_dataset(cls, dataset, columns: dict[str, str], where: str, limit: int | None = None,
                     checked: bool = False) -> PairDataset:
        """``dataset``'s ``pair`` column (or ``image_a`` and ``image_b``) and ``label`` column; values are checked
        unless ``checked`` (an ``.npz`` converted by hfstage was checked when it was converted)."""
        if "pair" in columns or column_of(dataset, "pair", columns, where, required=False):
            images = ArrayColumn(dataset, column_of(dataset, "pair", columns, where), f"{where}: column 'pair'")
            if len(images.shape) != 3 or images.shape[0] != 2:
                raise DataError(f"{where}: column {columns.get('pair', 'pair')!r} must hold 2 x H x W images per row, "
                                f"got rows of shape {images.shape}")
        else:
            a, b = (ArrayColumn(dataset, column_of(dataset, f, columns, where), f"{where}: column {f!r}")
                    for f in ("image_a", "image_b"))
            if len(a.shape) != 2:
                raise DataError(f"{where}: column {columns.get('image_a', 'image_a')!r} must hold H x W images, "
                                f"got rows of shape {a.shape}")
            images = _TwoImages(a, b, where)
        label = column_of(dataset, "label", columns, where)
        y = scalar_column(dataset, label)
        if not checked:
            _check_images(images, where)
            y = check_binary_labels(y, f"{where}: column {label!r}")
        return cls(images, y, limit)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {"pixel_values": torch.from_numpy(self.images.gather([i])[0]), "labels": self.y[i]}

    def __getitems__(self, indices):
        return {"pixel_values": torch.from_numpy(self.images.gather(indices)), "labels": self.y[torch.as_tensor(indices)]}

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])

    @property
    def x(self) -> np.ndarray:
        """Every pair, in memory (for ``stack --passthrough``)."""
        return np.concatenate(list(self.images.blocks()))[: len(self)]


def _check_images(images, where: str) -> None:
    """uint8 images, or other integers within 0-255, or finite floats."""
    if np.issubdtype(images.dtype, np.floating):
        for start, block in _with_offsets(images.blocks()):
            bad = first_non_finite(block)
            if bad is not None:
                raise DataError(f"{where}: images hold NaN or Inf (first at row {start + bad})")
    elif images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.integer):
            raise DataError(f"{where}: images must be uint8 or float, got {images.dtype}")
        for start, block in _with_offsets(images.blocks()):
            bad = ((block < 0) | (block > 255)).reshape(len(block), -1).any(axis=1)
            if bad.any():
                raise DataError(f"{where}: integer images must be within 0-255 (row {start + int(np.argmax(bad))})")


def _with_offsets(blocks):
    start = 0
    for block in blocks:
        yield start, block
        start += len(block)


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
        x = x.float().div_(255.0) if not x.is_floating_point() else x.float()
        if self.augmentation:
            x = augment_pairs(x, self.augmentation)
        return {"pixel_values": x, "labels": batch["labels"]}
