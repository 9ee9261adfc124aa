"""Feature sequences (keypoint or sensor clips, e.g. sign language), many classes.

``.npz`` keys: ``x`` float (N, T, F) padded clips; ``y`` int (N,) class ids in [0, C); optional ``lengths``
int (N,) valid frames per clip (1..T; the rest is padding, default: all T); optional ``classes``
(C,) class names. Any ``datasets`` source works too, with a ``features`` column (T x F per row, or a list
of frames of any length), an optional ``lengths`` column and a ``label`` column (ints, a ``ClassLabel``
whose names become the classes, or strings); ``data.columns`` maps these fields to other column names.
The collator builds an ``attention_mask`` from the lengths and applies the stage's augmentations to
valid frames only, on whole batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from hfstage.data import check_augmentation, class_order, first_non_finite, read_npz
from hfstage.data.arrow import ArrayColumn, InMemoryColumn, RaggedColumn, is_ragged, scalar_column
from hfstage.data.fields import class_labels
from hfstage.data.sources import column_of, converted
from hfstage.errors import DataError
from hfstage.registry import Registry

REQUIRED_KEYS = ("x", "y")
OPTIONAL_KEYS = ("lengths", "classes")


def load_sequence_arrays(path: str | Path, field: str = "data", keys: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """Read and validate one sequence split; every problem names the file and the key. ``keys``: ``x``, ``y``,
    ``lengths`` -> the file's own key names (``data.columns.features``/``label``/``lengths``)."""
    path = Path(path)
    keys = {"x": "x", "y": "y", "lengths": "lengths", **(keys or {})}
    stored = read_npz(path, field, (keys["x"], keys["y"]), (keys["lengths"], "classes"))
    arrays = {k: stored[keys.get(k, k)] for k in ("x", "y", "lengths", "classes") if keys.get(k, k) in stored}
    x, y = arrays["x"], arrays["y"]
    if x.ndim != 3:
        raise DataError(f"{path}: key {keys['x']!r} must have shape (N, T, F), got {tuple(x.shape)}")
    n, t = x.shape[:2]
    if n == 0 or t == 0:
        raise DataError(f"{path}: key {keys['x']!r} is empty (shape {tuple(x.shape)})")
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{path}: key {keys['x']!r} must be float, got {x.dtype}")
    x = x.astype(np.float32, copy=False)
    bad = first_non_finite(x)
    if bad is not None:
        raise DataError(f"{path}: key {keys['x']!r} holds NaN or Inf (first at sample {bad})")
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{path}: key {keys['y']!r} must have shape ({n},) to match {keys['x']!r}, got {tuple(y.shape)}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: key {keys['y']!r} must hold integer class ids, got {y.dtype}")
    if (y < 0).any():
        i = int(np.argmax(y < 0))
        raise DataError(f"{path}: key {keys['y']!r} must be >= 0; sample {i} has {y[i].item()}")
    lengths = arrays.get("lengths")
    if lengths is None:
        lengths = np.full(n, t, dtype=np.int64)
    elif lengths.ndim != 1 or len(lengths) != n or not np.issubdtype(lengths.dtype, np.integer):
        raise DataError(f"{path}: key {keys['lengths']!r} must be integers of shape ({n},), got {lengths.dtype} {tuple(lengths.shape)}")
    elif ((lengths < 1) | (lengths > t)).any():
        i = int(np.argmax((lengths < 1) | (lengths > t)))
        raise DataError(f"{path}: key {keys['lengths']!r} must be in [1, {t}] (the padded length); sample {i} has {lengths[i].item()}")
    out = {"x": x, "y": y.astype(np.int64), "lengths": lengths.astype(np.int64)}
    if "classes" in arrays:
        classes = arrays["classes"]
        if classes.ndim != 1 or int(y.max()) >= len(classes):
            raise DataError(f"{path}: key {keys['y']!r} has class {int(y.max())} but 'classes' names only {len(classes)}")
        out["classes"] = classes.astype(str)
    return out


def npz_keys(columns: dict[str, str]) -> dict[str, str]:
    """The .npz keys ``data.columns`` names: ``features`` -> ``x``, ``label`` -> ``y``, ``lengths``."""
    return {k: columns[f] for k, f in (("x", "features"), ("y", "label"), ("lengths", "lengths")) if f in columns}


def npz_as_dataset(path: str | Path, field: str = "data", columns: dict[str, str] | None = None):
    """A sequence ``.npz`` file as a ``datasets.Dataset`` (``features``, ``lengths``, ``label``; class names as a
    ``ClassLabel``), converted once into the cache."""
    import datasets

    keys = npz_keys(columns or {})

    def build():
        a = load_sequence_arrays(path, field, keys)
        label = (datasets.ClassLabel(names=list(a["classes"])) if "classes" in a else datasets.Value("int64"))
        features = datasets.Features({"features": datasets.Array2D(tuple(a["x"].shape[1:]), "float32"),
                                      "lengths": datasets.Value("int64"), "label": label})
        return datasets.Dataset.from_dict({"features": a["x"], "lengths": a["lengths"], "label": a["y"]},
                                          features=features)

    return converted(Path(path), "sequences", build, field, keys)



class SequenceDataset(Dataset):
    """Clips and their labels; ``__getitems__`` returns a whole batch with one gather.

    Built from arrays in memory (``SequenceDataset(x, y, lengths)``) or from a ``datasets.Dataset``
    (``SequenceDataset.from_dataset``), whose columns stay memory-mapped.
    """

    def __init__(self, x, y: np.ndarray, lengths: np.ndarray, classes=None, limit: int | None = None):
        self.frames = x if hasattr(x, "gather") else InMemoryColumn(x)
        self.y = torch.from_numpy(np.array(y[:limit], dtype=np.int64))  # copies: labels and lengths are small
        self.lengths = torch.from_numpy(np.array(lengths[:limit], dtype=np.int64))
        self.classes = None if classes is None else [str(c) for c in classes]

    @classmethod
    def from_dataset(cls, dataset, columns: dict[str, str], where: str, classes: list[str] | None = None,
                     limit: int | None = None, checked: bool = False) -> SequenceDataset:
        """``dataset``'s ``features``, optional ``lengths`` and ``label`` columns. String labels are mapped with
        ``classes`` (the training split's, when given)."""
        column = column_of(dataset, "features", columns, where)
        ragged = is_ragged(dataset, column)
        reader = RaggedColumn(dataset, column, f"{where}: column {column!r}") if ragged else \
            ArrayColumn(dataset, column, f"{where}: column {column!r}")
        if len(reader.shape) != (1 if ragged else 2):
            raise DataError(f"{where}: column {column!r} must hold T x F frames per row, got "
                            f"{'frames' if ragged else 'rows'} of shape {reader.shape}")
        if ragged:  # each row's own length, or fewer valid frames where a lengths column says so
            lengths = reader.lengths
            length_column = column_of(dataset, "lengths", columns, where, required=False)
            if length_column:
                given = scalar_column(dataset, length_column)
                bad = (given < 1) | (given > lengths)
                if bad.any():
                    i = int(np.argmax(bad))
                    raise DataError(f"{where}: column {length_column!r} must be in [1, the row's {int(lengths[i])} "
                                    f"frames]; row {i} has {given[i]}")
                lengths = given
        else:
            t = reader.shape[0]
            length_column = column_of(dataset, "lengths", columns, where, required=False)
            lengths = scalar_column(dataset, length_column) if length_column else np.full(len(reader), t)
            bad = (lengths < 1) | (lengths > t)
            if bad.any():
                i = int(np.argmax(bad))
                raise DataError(f"{where}: column {length_column!r} must be in [1, {t}] (the padded length); row {i} "
                                f"has {lengths[i]}")
        label = column_of(dataset, "label", columns, where)
        y, names = class_labels(dataset, "label", label, where, classes, class_order)
        if not checked:
            if not np.issubdtype(reader.dtype, np.floating):
                raise DataError(f"{where}: column {column!r} must hold float features, got {reader.dtype}")
            start = 0
            for block in reader.blocks():
                bad = first_non_finite(block)
                if bad is not None:
                    raise DataError(f"{where}: column {column!r} holds NaN or Inf (first at row {start + bad})")
                start += len(block)
        return cls(reader, y.astype(np.int64), lengths.astype(np.int64), names, limit)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {key: value[0] for key, value in self.__getitems__([i]).items()}

    def __getitems__(self, indices):
        index = torch.as_tensor(indices, dtype=torch.long)
        frames = torch.from_numpy(self.frames.gather(indices))
        if not frames.is_floating_point():
            frames = frames.float()
        return {"input_values": frames, "lengths": self.lengths[index], "labels": self.y[index]}

    @property
    def feature_dim(self) -> int:
        return int(self.frames.shape[-1])

    @property
    def x(self) -> np.ndarray:
        """Every clip, in memory (for ``stack --passthrough``)."""
        blocks = list(self.frames.blocks())
        longest = max(b.shape[1] for b in blocks)
        return np.concatenate([np.pad(b, ((0, 0), (0, longest - b.shape[1]), (0, 0))) for b in blocks])[: len(self)]


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
