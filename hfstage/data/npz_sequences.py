"""Feature sequences in ``.npz`` files (keypoint or sensor clips, e.g. sign language), many classes.

Keys: ``x`` float (N, T, F) padded clips; ``y`` int (N,) class ids in [0, C); optional ``lengths``
int (N,) valid frames per clip (1..T; the rest is padding, default: all T); optional ``classes``
(C,) class names. The collator builds an ``attention_mask`` from the lengths and applies the
stage's augmentations to valid frames only, on whole batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from hfstage.data import check_augmentation, first_non_finite, read_npz
from hfstage.errors import DataError
from hfstage.registry import Registry

REQUIRED_KEYS = ("x", "y")
OPTIONAL_KEYS = ("lengths", "classes")


def load_sequence_arrays(path: str | Path, field: str = "data") -> dict[str, np.ndarray]:
    """Read and validate one sequence split; every problem names the file and the key."""
    path = Path(path)
    arrays = read_npz(path, field, REQUIRED_KEYS, OPTIONAL_KEYS)
    x, y = arrays["x"], arrays["y"]
    if x.ndim != 3:
        raise DataError(f"{path}: key 'x' must have shape (N, T, F), got {tuple(x.shape)}")
    n, t = x.shape[:2]
    if n == 0 or t == 0:
        raise DataError(f"{path}: key 'x' is empty (shape {tuple(x.shape)})")
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{path}: key 'x' must be float, got {x.dtype}")
    x = x.astype(np.float32, copy=False)
    bad = first_non_finite(x)
    if bad is not None:
        raise DataError(f"{path}: key 'x' holds NaN or Inf (first at sample {bad})")
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{path}: key 'y' must have shape ({n},) to match 'x', got {tuple(y.shape)}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: key 'y' must hold integer class ids, got {y.dtype}")
    if (y < 0).any():
        i = int(np.argmax(y < 0))
        raise DataError(f"{path}: key 'y' must be >= 0; sample {i} has {y[i].item()}")
    lengths = arrays.get("lengths")
    if lengths is None:
        lengths = np.full(n, t, dtype=np.int64)
    elif lengths.ndim != 1 or len(lengths) != n or not np.issubdtype(lengths.dtype, np.integer):
        raise DataError(f"{path}: key 'lengths' must be integers of shape ({n},), got {lengths.dtype} {tuple(lengths.shape)}")
    elif ((lengths < 1) | (lengths > t)).any():
        i = int(np.argmax((lengths < 1) | (lengths > t)))
        raise DataError(f"{path}: key 'lengths' must be in [1, {t}] (the padded length); sample {i} has {lengths[i].item()}")
    out = {"x": x, "y": y.astype(np.int64), "lengths": lengths.astype(np.int64)}
    if "classes" in arrays:
        classes = arrays["classes"]
        if classes.ndim != 1 or int(y.max()) >= len(classes):
            raise DataError(f"{path}: key 'y' has class {int(y.max())} but 'classes' names only {len(classes)}")
        out["classes"] = classes.astype(str)
    return out


class SequenceDataset(Dataset):
    """Clips held as tensors; ``__getitems__`` returns a whole batch with one indexing operation."""

    def __init__(self, x: np.ndarray, y: np.ndarray, lengths: np.ndarray, classes: np.ndarray | None = None):
        self.x = torch.from_numpy(np.ascontiguousarray(x))
        self.y = torch.from_numpy(np.ascontiguousarray(y))
        self.lengths = torch.from_numpy(np.ascontiguousarray(lengths))
        self.classes = None if classes is None else [str(c) for c in classes]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {"input_values": self.x[i], "lengths": self.lengths[i], "labels": self.y[i]}

    def __getitems__(self, indices):
        index = torch.as_tensor(indices, dtype=torch.long)
        return {"input_values": self.x[index], "lengths": self.lengths[index], "labels": self.y[index]}


# --------------------------------------------------------------------------------------------------
# Augmentations (training only), each a strength; they touch valid frames only.

SEQUENCE_AUGMENTATIONS: Registry = Registry("sequence augmentation")
SEQUENCE_AUGMENTATIONS.register("jitter")("Gaussian noise with this standard deviation.")
SEQUENCE_AUGMENTATIONS.register("scale")("Multiply each clip by a factor in [1 - s, 1 + s].")
SEQUENCE_AUGMENTATIONS.register("time_shift")("Roll each clip by up to this fraction of its length.")
SEQUENCE_AUGMENTATIONS.register("frame_drop")("Drop each frame with this probability (the clip gets shorter).")
SEQUENCE_AUGMENTATIONS.register("time_warp")("Resample each clip to a length in [1 - s, 1 + s] times its own.")

_LIMITS = {"jitter": (0, 10), "scale": (0, 0.9), "time_shift": (0, 0.9), "frame_drop": (0, 0.9), "time_warp": (0, 0.9)}


def check_sequence_augmentation(augmentation: dict[str, float], where: str) -> None:
    check_augmentation(SEQUENCE_AUGMENTATIONS, _LIMITS, augmentation, where)


def _resample(clip: torch.Tensor, new_len: int) -> torch.Tensor:
    return F.interpolate(clip.T[None], size=new_len, mode="linear", align_corners=True)[0].T


def augment_sequences(x: torch.Tensor, lengths: torch.Tensor, aug: dict[str, float]):
    """(x, lengths) after the augmentations; padding stays zero."""
    x, lengths = x.clone(), lengths.clone()
    b, t, _ = x.shape
    if aug.get("time_warp") or aug.get("frame_drop") or aug.get("time_shift"):
        for i in range(b):  # per clip: lengths differ, and clips are short
            clip = x[i, : lengths[i]]
            if aug.get("frame_drop"):
                keep = torch.rand(len(clip)) >= aug["frame_drop"]
                if keep.sum() >= 2:
                    clip = clip[keep]
            if aug.get("time_warp"):
                factor = 1 + (torch.rand(()) * 2 - 1) * aug["time_warp"]
                clip = _resample(clip, int(min(t, max(2, round(len(clip) * float(factor))))))
            if aug.get("time_shift"):
                clip = torch.roll(clip, int((torch.rand(()) * 2 - 1) * aug["time_shift"] * len(clip)), dims=0)
            x[i] = 0
            x[i, : len(clip)] = clip
            lengths[i] = len(clip)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).unsqueeze(-1)
    if aug.get("scale"):
        x = x * (1 + (torch.rand(b, 1, 1) * 2 - 1) * aug["scale"])
    if aug.get("jitter"):
        x = x + torch.randn_like(x) * aug["jitter"]
    return x * mask, lengths


class SequenceCollator:
    """Batch -> ``input_values`` (B, T, F), ``attention_mask`` (B, T) and ``labels``."""

    def __init__(self, augmentation: dict[str, float] | None = None):
        self.augmentation = {k: v for k, v in (augmentation or {}).items() if v}

    def __call__(self, batch) -> dict[str, torch.Tensor]:
        if isinstance(batch, list):
            batch = {k: torch.stack([item[k] for item in batch]) for k in batch[0]}
        x, lengths = batch["input_values"].float(), batch["lengths"]
        if self.augmentation:
            x, lengths = augment_sequences(x, lengths, self.augmentation)
        mask = (torch.arange(x.shape[1])[None, :] < lengths[:, None]).long()
        return {"input_values": x, "attention_mask": mask, "labels": batch["labels"]}
