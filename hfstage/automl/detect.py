"""Which task kind a data set is, read from its fields: ``hfstage auto`` without ``--task``.

Every column of the training split (or key of hfstage's own files) is given a *value kind* from its ``datasets``
feature and its first rows: ``image``, ``image_pair``, ``audio``, ``sequence``, ``label`` (a class-like scalar: a
``ClassLabel``, a string, a bool), ``number`` (an int or float scalar), ``matrix`` (a float array in [0, 1]: an
image or a feature sequence, the data cannot say), or ``other``. A task kind fits when the data columns are exactly
what its declared fields take (pairs: two images or one image pair; images: one image; sequences: one sequence;
speech: one clip) and a label column is found (named label, labels, y, class, target ...; else the only
class-like scalar; else the only scalar). One fit is the answer (with the ``data.columns`` mapping when the names
differ from the fields'); none or several is an error that says what each kind needs and what was found, and to
give ``--task``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hfstage.errors import ConfigError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a"}
DATA_KINDS = ("image", "image_pair", "audio", "sequence", "matrix")
ROWS = 32  # rows looked at per column
# what each task kind's data columns are, by value kind (alternatives), and whether it needs a label column
NEEDS = {
    "pair_classification": ([{"image": 2}, {"image_pair": 1}], True, "two image columns (or one image-pair column) "
                            "and a 0/1 label"),
    "image_classification": ([{"image": 1}], True, "one image column and a class label"),
    "sequence_classification": ([{"sequence": 1}], True, "one feature-sequence column (T x F per row) and a class "
                                "label"),
    "speech_assessment": ([{"audio": 1}], False, "one audio column (with canonical/spoken phonemes and 0/1 labels)"),
}
FIELD_OF = {"image": ("image",), "image_pair": ("pair",), "sequence": ("features",), "audio": ("audio",)}
LABEL_NAMES = ("label", "labels", "y", "class", "target", "is_same", "same")
LENGTH_NAMES = ("lengths", "length", "n_frames", "frames_count")
OWN_KEYS = {"pair": "x", "features": "x", "label": "y", "audio": "path"}  # hfstage's own files' key per field


@dataclass
class Detection:
    """The task kind, the ``data`` mapping the recipes get (path, split names, columns) and the columns' kinds."""

    task: str
    data: dict[str, Any]
    kinds: dict[str, str] = field(default_factory=dict)
    why: str = ""
    samples: int = 0  # rows of the training split


def detect(path: str, task: str | None = None) -> Detection:
    """The task kind of the data at ``path`` (``task``: the kind the user named, checked to fit)."""
    from hfstage.tasks import TASKS

    if task is not None:
        TASKS.get(task, "--task")
    data, kinds, where, own, samples = _columns(path)
    fits = {name: _assign(name, kinds) for name in NEEDS}
    fits = {name: columns for name, columns in fits.items() if columns is not None}
    found = ", ".join(f"{c} ({k})" for c, k in kinds.items()) or "no columns"
    if task is not None:
        if task not in fits:
            need = NEEDS[task][2] if task in NEEDS else "its declared fields"
            raise ConfigError(f"--task {task}: {where} does not hold what it needs ({need}); found {found}")
        chosen = task
    elif len(fits) == 1:
        chosen = next(iter(fits))
    else:
        kinds_text = "; ".join(f"{name}: {NEEDS[name][2]}" for name in (fits or NEEDS))
        if not fits:
            raise ConfigError(f"--data {path}: no task kind fits {where} (found {found}); each kind needs: "
                              f"{kinds_text}. Give --task, and data.columns.<field>=<column> where the names differ")
        raise ConfigError(f"--data {path}: {where} could be {' or '.join(sorted(fits))} (found {found}): {kinds_text}. "
                          "Give --task")
    columns = {f: c for f, c in fits[chosen].items() if c != (OWN_KEYS.get(f, f) if own else f)}
    if columns:
        data["columns"] = columns
    why = f"{where}: {found} -> {chosen}" + ("" if task is None else " (--task)")
    return Detection(chosen, data, kinds, why, samples)


def _label_column(kinds: dict[str, str]) -> str | None:
    """The label among the scalar columns: the one named so, else the only class-like one (``label``: a ClassLabel,
    strings, bools), else the only one that is not a length."""
    scalars = [c for c, k in kinds.items() if k in ("label", "number")]
    named = [c for c in scalars if c.lower() in LABEL_NAMES]
    if named:
        return named[0]
    classes = [c for c in scalars if kinds[c] == "label"]
    rest = [c for c in scalars if c.lower() not in LENGTH_NAMES]
    return classes[0] if len(classes) == 1 else rest[0] if len(rest) == 1 else None


def _assign(task: str, kinds: dict[str, str]) -> dict[str, str] | None:
    """field -> column when the data columns are exactly what ``task`` takes (a ``matrix`` may be an image or a
    sequence), else None."""
    alternatives, labelled, _ = NEEDS[task]
    data_columns = [c for c, k in kinds.items() if k in DATA_KINDS]
    for want in alternatives:
        kind, count = next(iter(want.items()))
        usable = [c for c in data_columns
                  if kinds[c] == kind or (kinds[c] == "matrix" and kind in ("image", "sequence"))]
        if len(usable) != count or len(data_columns) != count:
            continue
        names = ("image_a", "image_b") if (task, kind) == ("pair_classification", "image") else FIELD_OF[kind]
        ordered = sorted(usable, key=lambda c: (c not in names, names.index(c) if c in names else 0, c))
        chosen = dict(zip(names, ordered))
        if labelled:
            label = _label_column(kinds)
            if label is None:
                continue
            chosen["label"] = label
            lengths = [c for c, k in kinds.items() if k == "number" and c.lower() in LENGTH_NAMES and c != label]
            if kind == "sequence" and lengths:
                chosen["lengths"] = lengths[0]
        return chosen
    return None


def _columns(path: str) -> tuple[dict[str, Any], dict[str, str], str, bool, int]:
    """(the data mapping, column -> value kind, what was read, whether it is hfstage's own layout, rows) of the
    training split."""
    from hfstage.config import DataConfig
    from hfstage.data.sources import open_split, source_kind, split_ref

    folder = Path(path)
    if not path.startswith("hf://") and not folder.exists():
        raise ConfigError(f"--data: {path} does not exist")
    own = _own_layout(folder) if folder.is_dir() else None
    if own is not None:
        data, kinds, where, rows = own
        return data, kinds, where, True, rows
    config = DataConfig(path=path)
    if source_kind(config) is None:
        raise ConfigError(f"--data {path}: neither hfstage's own files (train.npz, class folders under train/, "
                          "metadata.jsonl) nor a data set `datasets` reads (save_to_disk, parquet/arrow/csv/json, "
                          "hf://datasets/...)")
    ref = split_ref(config, config.train_file, "--data")
    table = open_split(ref)
    rows = table.select(range(min(ROWS, len(table))))
    kinds = {name: _feature_kind(feature, rows[name]) for name, feature in table.features.items()}
    return {"path": path}, kinds, str(ref), False, len(table)


def _own_layout(folder: Path):
    if (folder / "train.npz").is_file():
        with np.load(folder / "train.npz", allow_pickle=False) as z:
            kinds = {key: _value_kind([z[key][i] for i in range(min(ROWS, len(z[key])))]) if z[key].ndim > 1
                     else ("number" if key in ("y", "lengths") else "other") for key in z.files if key != "classes"}
            rows = len(z[z.files[0]])
        return {"path": str(folder)}, kinds, str(folder / "train.npz"), rows
    train = folder / "train"
    if train.is_dir() and any(p.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir())
                              for p in train.iterdir()):
        data = {"path": str(folder), "train_file": "train", "eval_file": _first(folder, ("val", "validation")),
                "test_file": _first(folder, ("test",))}
        rows = sum(1 for f in train.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        return data, {"image": "image", "label": "label"}, f"{train} (class folders)", rows
    meta = next((folder / m for m in ("metadata.jsonl", "metadata.csv") if (folder / m).is_file()), None)
    if meta is not None:
        rows = _metadata(meta)
        kinds = {c: _value_kind([r.get(c) for r in rows[:ROWS]]) for c in (rows[0] if rows else {})}
        kinds = {c: "other" if c == "split" else k for c, k in kinds.items()}
        train = sum(1 for row in rows if row.get("split", "train") == "train")
        return ({"path": str(folder), "train_file": "train", "eval_file": "val", "test_file": "test"}, kinds,
                str(meta), train)
    return None


def _metadata(meta: Path) -> list[dict]:
    import csv
    import json

    with open(meta, encoding="utf-8") as fh:
        return list(csv.DictReader(fh)) if meta.suffix == ".csv" else [json.loads(line) for line in fh if line.strip()]


def _first(folder: Path, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if (folder / n).is_dir()), None)


def _feature_kind(feature, values: list) -> str:
    import datasets

    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.Audio):
        return "audio"
    if isinstance(feature, datasets.ClassLabel):
        return "label"
    return _value_kind(values)


def _value_kind(values: list) -> str:
    """The kind of a column's first values (plain Python, numpy or Arrow-decoded)."""
    present = [v for v in values if v is not None]
    if not present:
        return "other"
    first = present[0]
    if isinstance(first, (bool, np.bool_)):
        return "label"
    if isinstance(first, (int, float, np.integer, np.floating)):
        return "number"
    if isinstance(first, str):
        suffix = Path(first).suffix.lower()
        return "image" if suffix in IMAGE_SUFFIXES else "audio" if suffix in AUDIO_SUFFIXES else "label"
    if isinstance(first, (bytes, bytearray)):
        return "audio" if first[:4] in (b"RIFF", b"fLaC", b"OggS") else "image"
    if isinstance(first, dict):
        if "sampling_rate" in first or "array" in first:
            return "audio"
        name = str(first.get("path") or "")
        return "audio" if Path(name).suffix.lower() in AUDIO_SUFFIXES else "image" if "bytes" in first else "other"
    if isinstance(first, list) and first and all(isinstance(v, str) for v in first):
        return "other"  # phonemes
    try:
        arrays = [np.asarray(v) for v in present]
    except ValueError:
        return "sequence"  # ragged rows of frames
    if any(a.dtype == object for a in arrays):
        return "sequence"
    shapes = {a.shape for a in arrays}
    a = arrays[0]
    if a.ndim <= 1:
        return "other"  # a vector per row (0/1 labels per phoneme ...)
    if a.ndim >= 3 and a.shape[0] == 2:
        return "image_pair"
    if a.ndim == 3:
        return "image" if a.shape[0] in (1, 3, 4) or a.shape[-1] in (1, 3, 4) else "other"
    if a.ndim == 2 and len(shapes) > 1 and len({s[1] for s in shapes}) == 1 and a.dtype.kind == "f":
        return "sequence"  # frames of one width, rows of several lengths
    low = min(float(x.min()) for x in arrays)
    high = max(float(x.max()) for x in arrays)
    if a.dtype == np.uint8 or (a.dtype.kind in "iu" and 0 <= low and high <= 255 and min(a.shape) >= 8):
        return "image"
    if a.dtype.kind == "f" and 0.0 <= low and high <= 1.0:
        return "matrix"
    return "sequence"
