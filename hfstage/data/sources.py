"""Where a split comes from: hfstage's own files, or any source 🤗 ``datasets`` reads.

``data.path`` is one of

- a folder of hfstage's own files (``train.npz`` ...): each file is converted once into a
  ``datasets.Dataset`` in the ``datasets`` cache (``<HF_DATASETS_CACHE>/hfstage/``), named by the SHA-256
  of its bytes, and memory-mapped from there by later runs and by every process of a run;
- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
- a folder of parquet, arrow, csv or json(l) files (``load_dataset`` with the matching builder; file names
  such as ``train-*.parquet`` / ``validation.csv`` name the splits);
- ``hf://datasets/OWNER/NAME[@REVISION]`` (``data.config`` names a configuration), through the Hub client
  and its cache (``HF_HUB_OFFLINE`` honoured);
- an ``imagefolder``/``audiofolder``-style folder: a sub-folder per split holding the media files and a
  ``metadata.jsonl``/``metadata.csv`` whose ``file_name`` column names them; the files become the
  ``image`` or ``audio`` column (paths), the other metadata columns stay as they are.

For the ``datasets`` sources ``data.train_file``/``eval_file``/``test_file`` name splits, and their
default file names mean the splits ``train``/``validation``/``test``. ``data.columns`` maps the task's
fields to the data set's columns.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hfstage.checkpoint import fingerprint
from hfstage.devices import distributed_state
from hfstage.errors import ConfigError, DataError

logger = logging.getLogger("hfstage")

HUB_DATASETS = "hf://datasets/"
TABLE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}
METADATA = ("metadata.jsonl", "metadata.csv")
AUDIO_EXTENSIONS = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a"}
# the default file names of DataConfig, and the split each means for a `datasets` source
DEFAULT_SPLITS = {"train.npz": "train", "val.npz": "validation", "test_public.npz": "test"}
CONVERTED_FORMAT = 1  # bump when the layout of converted files changes: they are then converted again


def _datasets():
    import datasets

    datasets.disable_progress_bars()
    return datasets


def source_kind(data) -> str | None:
    """``hub``, ``disk`` (save_to_disk), ``files`` (parquet/arrow/csv/json), or None for hfstage's own files
    (the training file ``data.train_file`` is there, or the speech layout's ``metadata.jsonl``/``.csv``)."""
    kind = _datasets_layout(str(data.path))
    if kind is not None or not Path(data.path).is_dir():
        return kind
    folder = Path(data.path)
    train = folder / data.train_file
    if train.is_file() or (train.is_dir() and not _has_tables(train)) or \
            any((folder / m).is_file() for m in ("metadata.jsonl", "metadata.csv")):
        return None  # hfstage's own layout: a training file, a folder of class folders, or the speech metadata
    return "files" if _has_tables(folder) else None


def _datasets_layout(path: str) -> str | None:
    """What a path is, whatever the task: ``hub``, ``disk`` (save_to_disk) or ``folder`` (split
    sub-folders of media named by their metadata); None when it takes the task's layout to tell."""
    if path.startswith(HUB_DATASETS):
        return "hub"
    folder = Path(path)
    if not folder.is_dir():
        return None
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        return "disk"
    return "folder" if _media_splits(folder) else None


def _media_splits(folder: Path) -> dict[str, Path]:
    """Split name -> metadata file, for the sub-folders whose metadata names media files by ``file_name``."""
    found = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        meta = next((sub / m for m in METADATA if (sub / m).is_file()), None)
        if meta is not None and "file_name" in _first_columns(meta):
            found[sub.name] = meta
    return found


def _first_columns(meta: Path) -> list[str]:
    import csv
    import json

    with open(meta, encoding="utf-8") as fh:
        if meta.suffix == ".csv":
            return next(csv.reader(fh), [])
        first = next((line for line in fh if line.strip()), "")
    try:
        row = json.loads(first)
    except ValueError:
        return []
    return list(row) if isinstance(row, dict) else []


def _media_folder(folder: Path):
    """The splits of an imagefolder/audiofolder-style folder: metadata rows, ``file_name`` as full paths in an
    ``audio`` or ``image`` column."""
    datasets = _datasets()
    splits = {}
    for name, meta in _media_splits(folder).items():
        table = datasets.load_dataset("csv" if meta.suffix == ".csv" else "json", data_files=str(meta), split="train")
        paths = [str(meta.parent / f) for f in table["file_name"]]
        audio = bool(paths) and Path(paths[0]).suffix.lower() in AUDIO_EXTENSIONS
        splits[name] = table.remove_columns("file_name").add_column("audio" if audio else "image", paths)
    return datasets.DatasetDict(splits)


_SPLIT_WORDS = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                "val": "validation", "dev": "validation", "test": "test", "testing": "test", "eval": "test",
                "evaluation": "test"}


def _table_splits(folder: Path) -> dict[str, list[str]]:
    """The folder's table files by split, named as ``datasets`` names them (``train-*.parquet``,
    ``validation.csv``, ``test/part-0.json`` ...; files naming no split are ``train``). Only table files count: a
    folder of images or clips beside the tables (which the tables name by path) is not read as data."""
    import re

    splits: dict[str, list[str]] = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in TABLE_BUILDERS):
        parts = [w for part in file.relative_to(folder).with_suffix("").parts for w in re.split(r"[-._ /0-9]+", part)]
        split = next((_SPLIT_WORDS[w.lower()] for w in parts if w.lower() in _SPLIT_WORDS), "train")
        splits.setdefault(split, []).append(str(file))
    return splits


def _has_tables(folder: Path) -> bool:
    return any(p.suffix in TABLE_BUILDERS for p in folder.rglob("*") if p.is_file())


@dataclass(frozen=True)
class SplitRef:
    """One split of the run's data: a file of hfstage's own format, or a named split of a ``datasets`` source."""

    source: str  # data.path
    name: str  # the file name, or the split name
    where: str  # the config field or flag it came from, for messages
    config: str | None = None  # data.config
    kind: str | None = None  # what source_kind says: hub, disk, folder, files; None for hfstage's own files
    given: object = field(default=None, compare=False)  # a datasets.Dataset passed in from Python (kind "given")

    @property
    def dataset(self) -> bool:
        return self.kind is not None

    @property
    def path(self) -> Path:
        return Path(self.source) / self.name

    @property
    def folder(self) -> Path | None:
        """The local folder relative paths in the split's rows are relative to (None for data from the Hub or
        passed in from Python)."""
        return Path(self.source) if self.given is None and not self.source.startswith(HUB_DATASETS) else None

    def __str__(self) -> str:
        if self.given is not None:
            return f"{self.name}_dataset"
        return f"{self.source} [split {self.name}]" if self.dataset else str(self.path)


def split_ref(data, name: str | None, where: str) -> SplitRef | None:
    """The split a config field names (None stays None)."""
    if name is None:
        return None
    kind = source_kind(data)
    if kind is None:
        return SplitRef(data.path, name, where)
    return SplitRef(data.path, DEFAULT_SPLITS.get(name, name), where, data.config, kind)


def run_split_refs(data, given: dict | None = None) -> dict[str, SplitRef | None]:
    """The run's train/eval/test splits by config field (``train_file`` ...); with ``given`` (``{"train": Dataset,
    "eval": ..., "test": ...}``, from ``hfstage.train``) those data sets instead of ``data.path``."""
    if given is not None:
        return {f"{name}_file": None if given.get(name) is None else
                SplitRef(str(data.path), name, "hfstage.train", kind="given", given=given[name])
                for name in ("train", "eval", "test")}
    return {field: split_ref(data, getattr(data, field), f"data.{field}")
            for field in ("train_file", "eval_file", "test_file")}


_OPENED: dict[tuple, object] = {}  # (kind, path, config, files) -> DatasetDict, once per process


def _open_source(ref: SplitRef):
    datasets = _datasets()
    folder, kind = Path(ref.source), ref.kind
    stamp = () if kind == "hub" else tuple(sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns)
                                                for p in folder.rglob("*") if p.is_file()))
    key = (kind, ref.source, ref.config, stamp)  # a folder whose files changed is read again
    if key in _OPENED:
        return _OPENED[key]
    try:
        if kind == "hub":
            repo, _, revision = ref.source[len(HUB_DATASETS):].strip("/").partition("@")
            opened = datasets.load_dataset(repo, ref.config, revision=revision or None)
        elif kind == "disk":
            opened = datasets.load_from_disk(ref.source)
        elif kind == "folder":
            opened = _media_folder(folder)
        else:
            suffixes = {p.suffix for p in Path(ref.source).rglob("*") if p.suffix in TABLE_BUILDERS}
            builders = {TABLE_BUILDERS[s] for s in suffixes}
            if len(builders) > 1:
                raise DataError(f"{ref.source}: holds {', '.join(sorted(suffixes))} files; keep one format per data folder")
            opened = datasets.load_dataset(builders.pop(), data_files=_table_splits(folder))
    except (DataError, ConfigError):
        raise
    except Exception as exc:  # datasets and the Hub client raise many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{ref.source}: could not be read as a data set ({type(exc).__name__}: {first}) "
                        f"(data.path)") from None
    if isinstance(opened, datasets.Dataset):  # a single save_to_disk split
        opened = datasets.DatasetDict({"train": opened})
    _OPENED[key] = opened
    return opened


def open_split(ref: SplitRef):
    """A named split of a ``datasets`` source (or the data set passed in), as a ``datasets.Dataset``."""
    if ref.given is not None:
        return ref.given
    splits = _open_source(ref)
    if ref.name not in splits:
        raise DataError(f"{ref.source}: no split {ref.name!r} ({ref.where}); its splits: {', '.join(splits) or 'none'}")
    return splits[ref.name]


def has_split(ref: SplitRef) -> bool:
    return ref.given is not None or ref.name in _open_source(ref)


def split_fingerprint(ref: SplitRef) -> str:
    """SHA-256 of a split's content: the file's bytes, or the bytes of the split's Arrow files (which data a model
    saw, checkable later: stacking refuses leaks)."""
    if not ref.dataset:
        return fingerprint(ref.path)
    return dataset_fingerprint(open_split(ref))


def dataset_fingerprint(dataset) -> str:
    """SHA-256 of a ``datasets.Dataset``'s content: the bytes of its Arrow files (and its row selection); for a
    data set held in memory, of ``datasets``' own fingerprint of it."""
    files = sorted(f["filename"] for f in dataset.cache_files)
    if not files:
        return hashlib.sha256(f"in-memory:{dataset._fingerprint}".encode()).hexdigest()
    digest = hashlib.sha256()
    for file in files:
        digest.update(fingerprint(file).encode())
    indices = getattr(dataset, "_indices", None)
    if indices is not None:
        digest.update(indices.column(0).to_numpy().tobytes())
    return digest.hexdigest()


def cache_root() -> Path:
    return Path(_datasets().config.HF_DATASETS_CACHE) / "hfstage"


def converted(path: Path, kind: str, build: Callable[[], object], field: str = "data", keys: dict | None = None):
    """``build()``'s ``datasets.Dataset`` for the file ``path``, made once and memory-mapped from the cache after.

    The cache entry is named by the file's SHA-256 (and the keys read, when ``data.columns`` renames them) and written to a temporary folder and renamed, so a killed
    conversion never leaves a half-written entry, and concurrent runs (or processes) agree on one.
    """
    if not Path(path).is_file():
        raise DataError(f"{path}: file not found ({field})")
    datasets = _datasets()
    name = f"{kind}-v{CONVERTED_FORMAT}-{fingerprint(path)[:32]}"
    if keys:  # the file's own key names (data.columns): another reading of the same bytes
        name += "-" + hashlib.sha256(repr(sorted(keys.items())).encode()).hexdigest()[:8]
    folder = cache_root() / name
    with distributed_state().main_process_first():  # the main process converts; the others then read its result
        if not (folder / "state.json").is_file():
            _convert(path, folder, build)
    return datasets.load_from_disk(str(folder))


def _convert(path: Path, folder: Path, build: Callable[[], object]) -> None:
    """``build()`` saved to a temporary folder, then renamed to ``folder``."""
    logger.debug("%s: converting into the datasets cache (once): %s", path, folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        build().save_to_disk(str(staged))
        os.replace(staged, folder)
    except OSError:
        if not (folder / "state.json").is_file():  # another run made it meanwhile: use that one
            raise
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def column_of(dataset, field: str, columns: dict[str, str], where: str, required: bool = True) -> str | None:
    """The data set's column for a task field (``data.columns.<field>`` or the field's own name)."""
    column = columns.get(field, field)
    if column in dataset.column_names:
        return column
    if not required and field not in columns:
        return None
    how = f"data.columns.{field}" if field in columns else f"the default; map it with data.columns.{field}"
    raise DataError(f"{where}: no column {column!r} for {field} ({how}); its columns: "
                    f"{', '.join(dataset.column_names)}")
