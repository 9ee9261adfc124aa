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
from hfstage.data.arrow import InMemoryColumn
from hfstage.data.sources import column_of, converted
from hfstage.errors import DataError
from hfstage.registry import Registry

REQUIRED_KEYS = ("x", "y")


def load_pair_arrays(path: str | Path, field: str = "data", keys: dict[str, str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one pair split; every problem names the file and the key. ``keys``: ``x``/``y`` -> the
    file's own key names (``data.columns.pair``/``label``)."""
    path = Path(path)
    keys = {"x": "x", "y": "y", **(keys or {})}
    arrays = read_npz(path, field, (keys["x"], keys["y"]))
    x, y = arrays[keys["x"]], arrays[keys["y"]]
    n = len(x)
    if x.ndim != 4 or x.shape[1] != 2:
        raise DataError(f"{path}: key {keys['x']!r} must have shape (N, 2, H, W), got {tuple(x.shape)}")
    if n == 0:
        raise DataError(f"{path}: key {keys['x']!r} is empty (the split has no samples)")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.floating):
            raise DataError(f"{path}: key {keys['x']!r} must be uint8 or float, got {x.dtype}")
        x = x.astype(np.float32, copy=False)
        bad = first_non_finite(x)
        if bad is not None:
            raise DataError(f"{path}: key {keys['x']!r} holds NaN or Inf (first at sample {bad})")
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{path}: key {keys['y']!r} must have shape ({n},) to match {keys['x']!r}, got {tuple(y.shape)}")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating) or y.dtype == bool):
        raise DataError(f"{path}: key {keys['y']!r} must hold integers 0/1, got {y.dtype}")
    if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
        raise DataError(f"{path}: key {keys['y']!r} holds NaN or Inf")
    from hfstage.data.fields import check_binary_labels

    return x, check_binary_labels(y, f"{path}: key {keys['y']!r}")


def npz_keys(columns: dict[str, str]) -> dict[str, str]:
    """The .npz keys ``data.columns`` names: ``pair`` -> the images' key (default ``x``), ``label`` -> ``y``."""
    return {k: columns[f] for k, f in (("x", "pair"), ("y", "label")) if f in columns}


def npz_as_dataset(path: str | Path, field: str = "data", columns: dict[str, str] | None = None):
    """A pair ``.npz`` file as a ``datasets.Dataset`` (``pair``, ``label``), converted once into the cache."""
    import datasets

    keys = npz_keys(columns or {})

    def build():
        x, y = load_pair_arrays(path, field, keys)
        features = datasets.Features({"pair": datasets.Array3D(tuple(x.shape[1:]), str(x.dtype)),
                                      "label": datasets.Value("int64")})
        return datasets.Dataset.from_dict({"pair": x, "label": y}, features=features)

    return converted(Path(path), "pairs", build, field, keys)



class _TwoImages:
    """Two image columns (``image_a``, ``image_b``) read as one pair column: (B, 2, H, W) or (B, 2, C, H, W)."""

    def __init__(self, a, b, where: str, names: tuple[str, str]):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise DataError(f"{where}: columns {names[0]!r} and {names[1]!r} differ ({a.shape} {a.dtype} vs {b.shape} "
                            f"{b.dtype}); set model.image_size and model.in_channels to have both converted")
        self.a, self.b = a, b
        self.shape, self.dtype = (2, *a.shape), a.dtype
        self.native = a.native if a.native == b.native else None

    def gather(self, indices) -> np.ndarray:
        return np.stack([self.a.gather(indices), self.b.gather(indices)], axis=1)

    def blocks(self):
        for a, b in zip(self.a.blocks(), self.b.blocks()):
            yield np.stack([a, b], axis=1)

    def check(self) -> None:
        self.a.check()
        self.b.check()


class PairDataset(Dataset):
    """Pairs and their labels; ``__getitems__`` returns a whole batch with one gather.

    Built from arrays in memory (``PairDataset(x, y)``) or from a ``datasets.Dataset``
    (``PairDataset.from_dataset``), whose columns stay in their files: every process reads (and decodes) only its
    batches. A batch is (B, 2, H, W) for grey images and (B, 2, C, H, W) for colour ones.
    """

    def __init__(self, x, y: np.ndarray, limit: int | None = None):
        self.images = x if hasattr(x, "gather") else InMemoryColumn(x)
        self.y = torch.from_numpy(np.array(y[:limit], dtype=np.int64))  # a copy: labels are small

    @classmethod
    def from_dataset(cls, dataset, columns: dict[str, str], where: str, limit: int | None = None,
                     checked: bool = False, base: Path | None = None, channels: int | None = None,
                     size: tuple[int, int] | None = None) -> PairDataset:
        """``dataset``'s ``pair`` column (or ``image_a`` and ``image_b``) and ``label`` column, decoded by
        ``hfstage.data.fields`` (any image representation; paths relative to ``base``), converted to ``channels``
        and ``size`` (None: the first image's). Values are checked unless ``checked`` (an ``.npz`` converted by
        hfstage was checked when it was converted)."""
        from hfstage.data.fields import binary_labels, image_reader

        if "pair" in columns or column_of(dataset, "pair", columns, where, required=False):
            name = column_of(dataset, "pair", columns, where)
            images = image_reader(dataset, name, where, "pair", base, channels, size, pair=True)
        else:
            names = tuple(column_of(dataset, f, columns, where) for f in ("image_a", "image_b"))
            a = image_reader(dataset, names[0], where, "image_a", base, channels, size)
            size = size or a.size
            b = image_reader(dataset, names[1], where, "image_b", base, a.channels, size)
            images = _TwoImages(a, b, where, names)
        label = column_of(dataset, "label", columns, where)
        y = binary_labels(dataset, "label", label, where)
        if not checked:
            images.check()
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
    def stored_size(self) -> tuple[int, int] | None:
        """The (H, W) of the stored pixel arrays, when they are arrays (encoded images may differ row by row)."""
        native = self.images.native
        return tuple(native[1:]) if native is not None else None

    @property
    def channels(self) -> int:
        return 1 if len(self.images.shape) == 3 else int(self.images.shape[1])

    @property
    def x(self) -> np.ndarray:
        """Every pair, in memory (for ``stack --passthrough``)."""
        return np.concatenate(list(self.images.blocks()))[: len(self)]


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
    """Apply the augmentations to a float batch (B, 2, H, W) or (B, 2, C, H, W) in [0, 1]."""
    shape = x.shape
    b, h, w = shape[0], shape[-2], shape[-1]
    c = shape[2] if x.dim() == 5 else 1
    n = b * 2
    if any(aug.get(k, 0) for k in ("shift", "rotate", "scale")):
        angle = (torch.rand(n) * 2 - 1) * math.radians(aug.get("rotate", 0.0))
        scale = 1 + (torch.rand(n) * 2 - 1) * aug.get("scale", 0.0)
        shift = (torch.rand(n, 2) * 2 - 1) * aug.get("shift", 0.0) * 2  # grid units span 2
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, (n, c, h, w), align_corners=False)
        x = F.grid_sample(x.reshape(n, c, h, w), grid, align_corners=False, padding_mode="zeros").reshape(shape)
    if aug.get("noise", 0):
        x = (x + torch.randn_like(x) * aug["noise"]).clamp_(0, 1)
    if aug.get("swap", 0):
        flip = torch.rand(b) < aug["swap"]
        x = torch.where(flip.view(b, *([1] * (x.dim() - 1))), x.flip(1), x)
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
