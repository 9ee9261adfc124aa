"""Image classification data: a folder tree ``root/<class>/*.png`` (read through ``datasets``'
``imagefolder``) or a CSV of ``path,label``, plus unlabelled folders of images to predict.

Every file is opened and checked when a split is loaded, so a corrupt or unreadable image stops the
run before training with an error naming the file (or, with ``data.skip_bad_images: true``, is left
out and counted). Images are decoded in ``__getitem__`` and turned into tensors by
:class:`ImageCollator` with timm's transforms, built from the model's config (size, mean, std,
interpolation) and the stage's augmentations.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from hfstage.data import check_augmentation, class_order
from hfstage.data.sources import column_of
from hfstage.errors import ConfigError, DataError
from hfstage.registry import Registry

logger = logging.getLogger("hfstage")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# name -> what the strength means; limits below
IMAGE_AUGMENTATIONS: Registry = Registry("image augmentation")
for _name, _help in {
    "hflip": "probability of a horizontal flip",
    "vflip": "probability of a vertical flip",
    "crop": "random resized crop keeping at least this fraction of the area",
    "rand_augment": "RandAugment magnitude 0-9 (timm `rand-m<M>-mstd0.5-inc1-mmax9`)",
    "color_jitter": "brightness/contrast/saturation jitter strength",
    "random_erasing": "probability of erasing a random rectangle",
    "mixup": "mixup alpha: batches of blended images with blended (soft) labels (timm `Mixup`)",
    "cutmix": "cutmix alpha: a pasted rectangle from another image, labels mixed by area (timm `Mixup`)",
    "match_target": "fraction of training images degraded toward the brightness, contrast, blur and noise of "
                    "`data.unlabeled_file` (`true` = all); fitted when the stage starts, recorded in stage.json",
}.items():
    IMAGE_AUGMENTATIONS.register(_name)(_help)
_LIMITS = {"hflip": (0, 1), "vflip": (0, 1), "crop": (0.05, 1), "rand_augment": (0, 9), "color_jitter": (0, 1),
           "random_erasing": (0, 1), "mixup": (0, 10), "cutmix": (0, 10), "match_target": (0, 1)}
BATCH_AUGMENTATIONS = ("mixup", "cutmix")
PRE_AUGMENTATIONS = ("match_target",)  # applied to the decoded image before timm's transforms


def check_image_augmentation(augmentation: dict[str, float], where: str, loss: str = "cross_entropy") -> None:
    check_augmentation(IMAGE_AUGMENTATIONS, _LIMITS, augmentation, where)
    mixing = [a for a in BATCH_AUGMENTATIONS if augmentation.get(a)]
    if mixing and loss != "cross_entropy":
        raise ConfigError(f"{where}.augmentation.{mixing[0]}: mixed (soft) labels need loss cross_entropy, not {loss}")


@dataclass
class ImageList:
    """Files and labels of one split (labels are -1 for unlabelled images)."""

    paths: list[str]
    labels: np.ndarray
    classes: list[str]
    skipped: int = 0


def _quiet_datasets():
    import datasets

    datasets.disable_progress_bars()
    return datasets


def _check_images(paths: list[str], skip_bad: bool, where: str) -> tuple[list[int], int]:
    """Indices of readable images; a bad one raises (or is counted when ``skip_bad``)."""
    from PIL import Image

    good, bad = [], 0
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                im.verify()
            good.append(i)
        except Exception as exc:  # PIL raises many kinds for broken files
            if not skip_bad:
                raise DataError(f"{path}: not a readable image ({type(exc).__name__}: {exc}) ({where}); "
                                "set data.skip_bad_images=true to leave such files out") from None
            bad += 1
    if bad:
        logger.warning("%s: left out %d unreadable image(s) (data.skip_bad_images)", where, bad)
    return good, bad


def list_image_folder(root: Path, where: str) -> tuple[list[str], np.ndarray, list[str]]:
    """``root/<class>/*`` through ``datasets``' imagefolder: (paths, labels, class names)."""
    datasets = _quiet_datasets()
    if not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in root.rglob("*")):
        raise DataError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) ({where})")
    try:
        # data_files, not data_dir: a folder called val/ or test/ must not be taken for a split name
        ds = datasets.load_dataset("imagefolder", data_files={"train": f"{root}/**"}, split="train")
    except Exception as exc:  # datasets wraps its errors variously
        raise DataError(f"{root}: could not be read as an image folder ({type(exc).__name__}: {exc}) ({where})") from None
    ds = ds.cast_column("image", datasets.Image(decode=False))
    paths = [item["path"] for item in ds["image"]]
    if "label" in ds.column_names:
        return paths, np.asarray(ds["label"], dtype=np.int64), list(ds.features["label"].names)
    return paths, np.full(len(paths), -1, dtype=np.int64), []


def list_image_csv(path: Path, where: str, columns: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """A CSV with a header naming ``path`` and ``label`` (or the columns ``data.columns.image``/``label`` name);
    relative paths are relative to the CSV's folder."""
    paths, labels = [], []
    image_key, label_key = (columns or {}).get("image", "path"), (columns or {}).get("label", "label")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [k for k in (image_key, label_key) if k not in (reader.fieldnames or [])]
            if missing:
                field = "image" if missing[0] == image_key else "label"
                how = f"data.columns.{field}" if field in (columns or {}) else f"the default; map it with data.columns.{field}"
                raise DataError(f"{path}: no column {missing[0]!r} for {field} ({how}); its columns: "
                                f"{', '.join(reader.fieldnames or []) or 'none'} ({where})")
            for line, row in enumerate(reader, start=2):
                file, label = (row.get(image_key) or "").strip(), (row.get(label_key) or "").strip()
                if not file or not label:
                    raise DataError(f"{path}: line {line}: empty {image_key if not file else label_key!r} ({where})")
                full = (path.parent / file) if not Path(file).is_absolute() else Path(file)
                if not full.is_file():
                    raise DataError(f"{path}: line {line}: image {file} not found ({where})")
                paths.append(str(full))
                labels.append(label)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 CSV file ({exc}) ({where})") from None
    if not paths:
        raise DataError(f"{path}: no rows ({where})")
    return paths, labels


def load_image_list(path: Path, where: str, classes: list[str] | None = None, skip_bad: bool = False,
                    labelled: bool = True, columns: dict[str, str] | None = None) -> ImageList:
    """One split. ``classes`` (from the training split) maps class names of later splits to the same ids."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found ({where})")
    if path.is_dir():
        paths, ids, names = list_image_folder(path, where)
        if labelled and not names:
            raise DataError(f"{path}: images but no class folders; a labelled split is root/<class>/*.png ({where})")
        raw = [names[i] for i in ids] if names else None
    elif path.suffix.lower() == ".csv":
        paths, raw = list_image_csv(path, where, columns)
    else:
        raise DataError(f"{path}: expected a folder of class folders or a .csv of path,label ({where})")
    if raw is None:
        labels, found = np.full(len(paths), -1, dtype=np.int64), []
    else:
        found = class_order(raw)
        names = classes if classes is not None else found
        index = {c: i for i, c in enumerate(names)}
        unknown = [c for c in found if c not in index]
        if unknown:
            raise DataError(f"{path}: class {unknown[0]!r} is not one of the training split's classes "
                            f"({', '.join(names)}) ({where})")
        labels = np.array([index[c] for c in raw], dtype=np.int64)
        found = names
    good, bad = _check_images(paths, skip_bad, where)
    if not good:
        raise DataError(f"{path}: no readable images ({where})")
    return ImageList([paths[i] for i in good], labels[good], found, bad)


def _limited(n: int, limit: int | None, seed: int) -> np.ndarray:
    order = np.arange(n)
    if limit is not None and limit < n:  # a random subset keeps every class (folders are sorted)
        order = np.sort(np.random.default_rng(seed).permutation(n)[:limit])
    return order


class ImageDataset(Dataset):
    """Decoded RGB images (PIL) and labels; ``ids`` are the file names without extension (or row numbers).

    Built from files (``ImageDataset(ImageList)``) or from the ``image`` column of a ``datasets.Dataset``
    (``ImageDataset.from_dataset``), read a row at a time from its Arrow files.
    """

    def __init__(self, images: ImageList, limit: int | None = None, seed: int = 0):
        order = _limited(len(images.paths), limit, seed)
        self.paths = [images.paths[i] for i in order]
        self.y = images.labels[order]
        self.classes = images.classes
        self.skipped = images.skipped
        self.source, self.rows, self.column = None, None, None  # a datasets.Dataset, its rows, the image column
        self.pixels = None  # or a column of pixel arrays (hfstage.data.fields.ArrayImages) and its rows
        self.base = None  # the folder relative paths of a datasets source are relative to

    @classmethod
    def from_dataset(cls, dataset, columns: dict[str, str], where: str, classes: list[str] | None = None,
                     limit: int | None = None, skip_bad: bool = False, seed: int = 0,
                     base: Path | None = None) -> ImageDataset:
        """``dataset``'s ``image`` column (any representation ``hfstage.data.fields`` decodes; paths relative to
        ``base``) and ``label`` column (a ``ClassLabel``, class names or ids); ``classes`` (the training split's) map
        the names to ids."""
        import datasets

        datasets.disable_progress_bars()
        from hfstage.data.fields import ArrayImages, class_labels, decode_image, is_encoded

        column = column_of(dataset, "image", columns, where)
        label = column_of(dataset, "label", columns, where)
        y, known = class_labels(dataset, "label", label, where, classes, class_order, ints_are_names=True)
        if not is_encoded(dataset, column):  # pixel arrays: read a row at a time, turned into images when used
            pixels = ArrayImages(dataset, column, f"{where}: column {column!r}", None, None)
            pixels.check()
            rows = _limited(len(pixels), limit, seed)
            out = cls(ImageList([f"row_{r}" for r in rows], y[rows], known))
            out.pixels, out.rows = pixels, rows
            return out
        if isinstance(dataset.features[column], datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
        good, bad, paths = [], 0, []
        for start, batch in enumerate(dataset.select_columns([column]).iter(batch_size=256)):
            for offset, item in enumerate(batch[column]):
                row = start * 256 + offset
                path = item.get("path") if isinstance(item, dict) else item if isinstance(item, str) else None
                paths.append(path)
                try:
                    decode_image(item, base, f"{where}: row {row}", "image", column, verify=True).close()
                    good.append(row)
                except DataError as exc:
                    if not skip_bad:
                        raise DataError(f"{exc}; set data.skip_bad_images=true to leave such rows out") from None
                    bad += 1
        if not good:
            raise DataError(f"{where}: no readable images")
        if bad:
            logger.warning("%s: left out %d unreadable image(s) (data.skip_bad_images)", where, bad)
        rows = np.asarray(good)[_limited(len(good), limit, seed)]
        out = cls(ImageList([paths[r] or str(r) for r in rows], y[rows], known, bad))
        out.source, out.rows, out.column, out.base = dataset, rows, column, base
        return out

    @property
    def ids(self) -> list[str]:
        return [Path(p).stem for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        if self.pixels is not None:
            from hfstage.data.fields import array_to_pil

            return {"image": array_to_pil(self.pixels.gather([int(self.rows[i])])[0]), "labels": int(self.y[i])}
        from hfstage.data.fields import decode_image

        item = self.paths[i] if self.source is None else self.source[int(self.rows[i])][self.column]
        with decode_image(item, self.base, self.paths[i], "image", self.column or "path") as im:  # checked at load
            return {"image": im.convert("RGB"), "labels": int(self.y[i])}


def scaled_augmentation(augmentation: dict[str, float], factor: float) -> dict[str, float]:
    """Every per-image strength times ``factor``, kept within its limits (crop: the area given up is scaled)."""
    out = {}
    for name, value in augmentation.items():
        if name in BATCH_AUGMENTATIONS or name in PRE_AUGMENTATIONS:
            continue
        lo, hi = _LIMITS[name]
        scaled = 1 - (1 - value) * factor if name == "crop" else value * factor
        out[name] = min(max(scaled, lo), hi)
    return out


def class_transforms(model_config, augmentation: dict[str, float], per_class: dict[str, float], where: str) -> dict:
    """label id -> training transform for the classes ``class_augmentation`` names."""
    from hfstage.arguments import closest

    ids = {str(k): int(v) for k, v in (model_config.label2id or {}).items()}
    out = {}
    for name, factor in per_class.items():
        if name not in ids:
            raise ConfigError(f"{where}.class_augmentation: {name!r} is not a class{closest(name, list(ids))} "
                              f"(classes: {', '.join(ids)})")
        out[ids[name]] = image_transform(model_config, True, scaled_augmentation(augmentation, factor))
    return out


def image_transform(model_config, training: bool, augmentation: dict[str, float] | None = None):
    """timm's transforms for the model's input (size, mean, std, interpolation) and the stage's augmentations."""
    from timm.data import create_transform

    size = (3, model_config.image_size, model_config.image_size)
    common = dict(input_size=size, mean=tuple(model_config.mean), std=tuple(model_config.std),
                  interpolation=model_config.interpolation)
    aug = {k: v for k, v in (augmentation or {}).items() if k not in PRE_AUGMENTATIONS}
    if not training or not aug:
        return create_transform(is_training=False, crop_pct=1.0, **common)
    crop = aug.get("crop")
    return create_transform(
        is_training=True,
        scale=(crop, 1.0) if crop else (1.0, 1.0),
        ratio=(3 / 4, 4 / 3) if crop else (1.0, 1.0),
        hflip=aug.get("hflip", 0.0),
        vflip=aug.get("vflip", 0.0),
        color_jitter=aug.get("color_jitter") or None,
        # the increasing-strength op set, magnitude capped at 9: timm's posterize asks Pillow for 0 bits at
        # the top level (and, in the default set, at levels below 2.5), which Pillow >= 12 refuses
        auto_augment=f"rand-m{aug['rand_augment']:g}-mstd0.5-inc1-mmax9" if aug.get("rand_augment") else None,
        re_prob=aug.get("random_erasing", 0.0),
        **common,
    )


class ImageCollator:
    """[{"image": PIL, "labels": int}] -> {"pixel_values": (B, 3, S, S), "labels": (B,)}.

    With mixup/cutmix (training only) the labels become class distributions (B, C): timm's ``Mixup``
    mixes pairs of samples; an odd last sample keeps its one-hot label.
    """

    def __init__(self, transform, augmentation: dict[str, float] | None = None, num_labels: int | None = None,
                 per_label: dict | None = None, pre=None):
        self.transform = transform
        self.pre = pre  # on the decoded image before timm's transforms (augmentation.match_target's degradation)
        self.per_label = per_label or {}  # class-wise augmentation strength
        self.mixup = None
        aug = augmentation or {}
        if any(aug.get(a) for a in BATCH_AUGMENTATIONS):
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=aug.get("mixup", 0.0), cutmix_alpha=aug.get("cutmix", 0.0),
                               label_smoothing=0.0, num_classes=num_labels)
            self.num_labels = num_labels

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        pre = self.pre or (lambda image: image)
        x = torch.stack([self.per_label.get(s["labels"], self.transform)(pre(s["image"])) for s in samples])
        y = torch.tensor([s["labels"] for s in samples], dtype=torch.long)
        if self.mixup is None:
            return {"pixel_values": x, "labels": y}
        even = len(y) - len(y) % 2
        soft = torch.nn.functional.one_hot(y, self.num_labels).float()
        if even:
            x[:even], soft[:even] = self.mixup(x[:even], y[:even])
        return {"pixel_values": x, "labels": soft}
