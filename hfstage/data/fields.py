"""One decoder per field kind, whatever the source: what a task's declared fields may hold, and how each
representation becomes what the collators need.

A task declares its fields (``hfstage.tasks.base.Field``) by kind; the kinds and the representations each accepts
are listed in ``FIELD_KINDS`` (the docs' per-task tables are checked against it, and the conformance matrix in
the suite writes every representation). A value a decoder cannot read stops the run with one error naming the
split, the row, the field, the user's column, what was found and what is accepted.

Images are decoded per batch, never held whole: numeric columns are gathered from their Arrow files
(``hfstage.data.arrow``), encoded ones (an ``Image`` feature's bytes or path, a path, raw bytes) opened with PIL
for the rows of the batch only.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hfstage.errors import ConfigError, DataError


@dataclass(frozen=True)
class FieldKind:
    name: str
    accepts: tuple[str, ...]  # representation names, as the docs' tables list them
    help: str


FIELD_KINDS: dict[str, FieldKind] = {k.name: k for k in (
    FieldKind("image", ("Image feature (bytes)", "Image feature (path)", "path", "uint8 array H x W",
                        "uint8 array H x W x C", "uint8 array C x H x W", "float array in [0, 1]", "nested list"),
              "any mode and size; converted to the model's channels and resized to its image size"),
    FieldKind("image_pair", ("uint8 array 2 x H x W", "uint8 array 2 x H x W x C", "uint8 array 2 x C x H x W",
                             "float array in [0, 1]", "nested list"),
              "both images of a pair in one value"),
    FieldKind("audio", ("Audio feature", "path", "{array, sampling_rate}", "bytes"),
              "any sample rate and channel count; mixed to mono and resampled to 16 kHz"),
    FieldKind("feature_sequence", ("Array2D", "list of lists (T x F)", "ragged rows"),
              "T frames of F features; ragged rows are padded and their lengths kept"),
    FieldKind("lengths", ("int",), "valid frames per row (1..T); the rest is padding"),
    FieldKind("class_label", ("ClassLabel", "int", "string"), "class ids, or names (ordered as the training split's)"),
    FieldKind("binary_label", ("ClassLabel", "int", "bool", "string"),
              "0/1; strings 0/1, true/false, yes/no, same/different; a ClassLabel's names decide when they say "
              "which class is the match"),
    FieldKind("phonemes", ("list of strings", "space-separated string"),
              "phoneme symbols (a list written as text, as pandas writes it to CSV, is read as a list)"),
    FieldKind("phoneme_labels", ("list of 0/1", "string of 0/1"),
              "one 0/1 per canonical phoneme (1 = wrong): 0 1 0, 0,1,0, 010 or [0, 1, 0]"),
)}

_TRUE, _FALSE = {"1", "true", "yes", "same", "match", "positive"}, {"0", "false", "no", "different", "mismatch", "negative"}


def accepted(kind: str) -> str:
    return ", ".join(FIELD_KINDS[kind].accepts)


def fields_table(task) -> str:
    """The task's fields as a Markdown table (docs/tasks/*.md hold it verbatim; a test compares them)."""
    rows = ["| field | kind | required | accepted representations |", "|---|---|---|---|"]
    for f in task.fields:
        need = "instead of " + " + ".join(f"`{n}`" for n in f.alternative_to) if f.alternative_to else (
            "no" if f.optional else "yes")
        rows.append(f"| `{f.name}` | {f.kind} | {need} | {accepted(f.kind)} |")
    return "\n".join(rows)


def check_columns(task, columns: dict) -> dict[str, str]:
    """``data.columns`` names only the task's fields (the speech metadata's ``split`` too), each mapped to a column
    name."""
    from hfstage.arguments import closest

    known = [f.name for f in task.fields] + list(task.source_keys)
    for name, column in (columns or {}).items():
        if name not in known:
            raise ConfigError(f"data.columns.{name}: not a field of {task.name}{closest(str(name), known)} "
                              f"(its fields: {', '.join(known)})")
        if not isinstance(column, str) or not column:
            raise ConfigError(f"data.columns.{name}: must be a column name, got {column!r}")
    return dict(columns or {})


def refuse(where: str, row: int | None, field: str, column: str, found: str, kind: str) -> DataError:
    at = f" row {row}:" if row is not None else ""
    return DataError(f"{where}:{at} field {field!r} (column {column!r}) holds {found}; it accepts {accepted(kind)}")


# --- labels -------------------------------------------------------------------------------------------------------

def label_values(dataset, column: str) -> tuple[list, list[str] | None]:
    """A label column's values in dataset order, and a ``ClassLabel``'s names."""
    from hfstage.data.arrow import scalar_column

    values = scalar_column(dataset, column)
    names = getattr(dataset.features[column], "names", None)
    return values, (list(names) if names else None)


def binary_labels(dataset, field: str, column: str, where: str) -> np.ndarray:
    """0/1 per row from a ``ClassLabel`` (two classes; when both names say which is which, e.g. ``["same",
    "different"]``, the names decide, else the class ids), ints, bools, floats 0.0/1.0 or strings."""
    values, names = label_values(dataset, column)
    if names is not None and len(names) > 2:
        raise DataError(f"{where}: field {field!r} (column {column!r}) is a ClassLabel of {len(names)} classes "
                        f"({', '.join(names)}); a binary label has two")
    if names is not None and len(names) == 2:
        meaning = [str(n).strip().lower() for n in names]
        if meaning[0] in _TRUE and meaning[1] in _FALSE:  # the positive class first: its id is 0
            return (values == 0).astype(np.int64)
    if values.dtype == bool:
        return values.astype(np.int64)
    if values.dtype.kind in "OUS":
        out = np.empty(len(values), dtype=np.int64)
        for i, v in enumerate(values.tolist()):
            text = str(v).strip().lower()
            if text not in _TRUE | _FALSE:
                raise DataError(f"{where}: column {column!r} must be 0 or 1; sample {i} has {v!r} "
                                f"(strings: {'/'.join(sorted(_TRUE))} or {'/'.join(sorted(_FALSE))})")
            out[i] = int(text in _TRUE)
        return out
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise refuse(where, None, field, column, f"values of type {values.dtype}", "binary_label")
    return check_binary_labels(values, f"{where}: column {column!r}")


def check_binary_labels(y: np.ndarray, where: str) -> np.ndarray:
    """Numeric labels that are all 0 or 1, as int64; else one error naming the first other value."""
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{where} must be 0 or 1; sample {i} has {y[i].item()!r}")
    return y.astype(np.int64)


def class_labels(dataset, field: str, column: str, where: str, classes: list[str] | None,
                 order, ints_are_names: bool = False) -> tuple[np.ndarray, list[str] | None]:
    """(class ids, class names or None) from a ``ClassLabel`` (its names kept), ints or strings; ``classes`` (the
    training split's) maps names to the same ids; ``order`` orders the names of a training split. Ints are class ids,
    or, with ``ints_are_names``, names like any other (image classes: ``3`` is the class named "3")."""
    values, names = label_values(dataset, column)
    if names is not None or values.dtype.kind in "OUSb" or (ints_are_names and values.dtype.kind in "iu"):
        raw = ([names[int(v)] for v in values] if names is not None else [str(v) for v in values.tolist()])
        known = classes if classes is not None else (names if names is not None else order(raw))
        index = {c: i for i, c in enumerate(known)}
        unknown = next((c for c in raw if c not in index), None)
        if unknown is not None:
            raise DataError(f"{where}: column {column!r} has class {unknown!r}, not one of the training split's "
                            f"classes ({', '.join(known)})")
        return np.asarray([index[c] for c in raw], dtype=np.int64), list(known)
    if not np.issubdtype(values.dtype, np.integer) or (values < 0).any():
        bad = int(np.argmax(values < 0)) if np.issubdtype(values.dtype, np.integer) else 0
        raise DataError(f"{where}: column {column!r} must hold class ids >= 0 or class names; row {bad} has "
                        f"{values[bad]!r}")
    return values.astype(np.int64), classes


# --- phonemes ---------------------------------------------------------------------------------------------------

def _listed(text: str):
    """A list written as text (``"[0, 1, 0]"``, ``"['k', 'ae']"``, as pandas writes lists to CSV), or None."""
    import ast

    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, list) else None


def phonemes(value, where: str, field: str, column: str) -> list[str]:
    """A list of phoneme strings, or one space-separated string of them (or a list written as text)."""
    if isinstance(value, str):
        listed = _listed(value)
        return value.split() if listed is None else phonemes(listed, where, field, column)
    if isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value):
        return [p for p in value if p.strip()]
    raise DataError(f"{where}: field {field!r} (column {column!r}) holds {value!r}; it accepts {accepted('phonemes')}")


def phoneme_labels(value, where: str, field: str, column: str) -> list[int]:
    """One 0/1 per phoneme: a list (ints, bools), or a string of them ("0 1 0", "0,1,0", "010" or "[0, 1, 0]")."""
    if isinstance(value, str) and _listed(value) is not None:
        value = _listed(value)
    if isinstance(value, str):
        text = value.replace(",", " ").split()
        value = list(text[0]) if len(text) == 1 and len(text[0]) > 1 else text
        value = [int(v) if v.strip() in ("0", "1") else v for v in value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, bool, np.integer)) and int(v) in (0, 1) for v in value):
        return [int(v) for v in value]
    raise DataError(f"{where}: field {field!r} (column {column!r}) must be 0/1 per phoneme, got {value!r}; it accepts "
                    f"{accepted('phoneme_labels')}")


# --- images -----------------------------------------------------------------------------------------------------

def image_layout(shape: tuple[int, ...], where: str) -> str:
    """``hw``, ``hwc`` or ``chw`` for the shape of one image."""
    if len(shape) == 2:
        return "hw"
    if len(shape) == 3:
        if shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4):
            return "hwc"
        if shape[0] in (1, 3, 4):
            return "chw"
        if shape[-1] in (1, 3, 4):
            return "hwc"
    raise DataError(f"{where}: images of shape {tuple(shape)}; an image is H x W, H x W x C or C x H x W with C 1, 3 "
                    "or 4")


def to_chw(x: np.ndarray, layout: str) -> np.ndarray:
    """(B, ...) images in ``layout`` -> (B, C, H, W)."""
    if layout == "hw":
        return x[:, None]
    if layout == "hwc":
        return x.transpose(0, 3, 1, 2)
    return x


def convert_images(x: np.ndarray, channels: int, size: tuple[int, int]) -> np.ndarray:
    """(B, C, H, W) uint8 or float images -> ``channels`` channels of ``size``: alpha dropped, RGB to grey by PIL's
    luminance weights, grey repeated to RGB, resized bilinearly with antialiasing. Unchanged input stays as it is
    (uint8 stays uint8); changed input becomes float32 in [0, 1]."""
    import torch
    import torch.nn.functional as F

    c, h, w = x.shape[1:]
    if c == channels and (h, w) == tuple(size):
        return x
    t = torch.from_numpy(np.ascontiguousarray(x)).float()
    if x.dtype == np.uint8:
        t = t / 255.0
    if t.shape[1] == 4:
        t = t[:, :3]
    if t.shape[1] == 3 and channels == 1:
        t = (t * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif t.shape[1] == 1 and channels > 1:
        t = t.expand(-1, channels, -1, -1)
    if t.shape[1] != channels:
        raise DataError(f"images with {c} channels cannot be converted to {channels}")
    if (h, w) != tuple(size):
        t = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return t.clamp_(0, 1).numpy()


def decode_image(item, base: Path | None, where: str, field: str, column: str, verify: bool = False):
    """A PIL image from an ``Image`` feature's ``{bytes, path}``, a path (relative to ``base``), raw bytes, an
    array or a PIL image."""
    from PIL import Image

    if isinstance(item, Image.Image):
        return item
    source = item
    if isinstance(item, dict):
        source = io.BytesIO(item["bytes"]) if item.get("bytes") else item.get("path")
    elif isinstance(item, (bytes, bytearray)):
        source = io.BytesIO(item)
    if isinstance(source, str):
        path = Path(source)
        source = str(path if path.is_absolute() or base is None or not (base / path).exists() else base / path)
    if source is None:
        raise DataError(f"{where}: field {field!r} (column {column!r}) is empty")
    try:
        image = Image.open(source)
        image.verify() if verify else image.load()
    except FileNotFoundError:
        raise DataError(f"{where}: field {field!r} (column {column!r}): image file {source} not found") from None
    except Exception as exc:  # PIL raises many kinds for broken files
        name = source if isinstance(source, str) else "the stored bytes"
        raise DataError(f"{where}: field {field!r} (column {column!r}): {name} is not a readable image "
                        f"({type(exc).__name__}: {exc})") from None
    return image


def pil_to_array(image, channels: int, size: tuple[int, int]) -> np.ndarray:
    """A PIL image as uint8 (C, H, W) with ``channels`` channels, resized to ``size`` (H, W)."""
    from PIL import Image

    if image.mode in ("I;16", "I", "F") and channels == 1:
        array = np.asarray(image, dtype=np.float32)
        image = Image.fromarray(np.clip(array / max(1.0, float(array.max())) * 255, 0, 255).astype(np.uint8))
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    array = np.asarray(image)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def array_to_pil(x: np.ndarray):
    """One decoded image array ((H, W) or (C, H, W); uint8, or floats in [0, 1]) as an RGB PIL image."""
    from PIL import Image

    if np.issubdtype(x.dtype, np.floating):
        x = np.clip(np.rint(np.asarray(x, dtype=np.float32) * 255), 0, 255).astype(np.uint8)
    elif x.dtype != np.uint8:
        x = np.clip(x, 0, 255).astype(np.uint8)
    x = x if x.ndim == 2 else (x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0))
    return Image.fromarray(np.ascontiguousarray(x)).convert("RGB")


def pil_channels(image) -> int:
    return 1 if image.mode in ("1", "L", "LA", "I", "I;16", "F") else 3


def is_encoded(dataset, column: str) -> bool:
    """Whether a column holds encoded images (an ``Image`` feature, paths, bytes) rather than pixel arrays."""
    import datasets

    feature = dataset.features[column]
    return isinstance(feature, datasets.Image) or getattr(feature, "dtype", None) in (
        "string", "large_string", "binary", "large_binary")


class EncodedImages:
    """An image column of encoded values (``Image`` feature bytes or paths, path strings, bytes), decoded with PIL a
    batch at a time to uint8 (C, H, W) of one channel count and size."""

    def __init__(self, dataset, column: str, where: str, field: str, base: Path | None,
                 channels: int | None, size: tuple[int, int] | None):
        import datasets

        if isinstance(dataset.features[column], datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
        self.dataset, self.column, self.where, self.field, self.base = dataset.select_columns([column]), column, where, field, base
        if not len(self.dataset):
            raise DataError(f"{where}: is empty (the split has no samples)")
        first = decode_image(self.dataset[0][column], base, f"{where}: row 0", field, column)
        self.channels = channels or pil_channels(first)
        self.size = tuple(size) if size else (first.size[1], first.size[0])
        self.shape = self.size if self.channels == 1 else (self.channels, *self.size)  # grey: H x W, as stored
        self.dtype = np.dtype(np.uint8)
        self.native = None  # stored sizes may differ row by row

    def __len__(self) -> int:
        return len(self.dataset)

    def gather(self, indices) -> np.ndarray:
        rows = [int(i) for i in np.asarray(indices).reshape(-1)]
        items = self.dataset[rows][self.column] if rows else []
        out = np.empty((len(rows), *self.shape), dtype=np.uint8)
        for k, (row, item) in enumerate(zip(rows, items)):
            image = decode_image(item, self.base, f"{self.where}: row {row}", self.field, self.column)
            out[k] = pil_to_array(image, self.channels, self.size).reshape(self.shape)
        return out

    def check(self) -> None:
        """Check every image once (PIL's verify, no decoding): a missing or unreadable one stops the run before training."""
        for start in range(0, len(self.dataset), 512):
            for k, item in enumerate(self.dataset[start:start + 512][self.column]):
                decode_image(item, self.base, f"{self.where}: row {start + k}", self.field, self.column,
                             verify=True).close()

    def blocks(self):
        for start in range(0, len(self), 1024):
            yield self.gather(np.arange(start, min(start + 1024, len(self))))


class ArrayImages:
    """An image column of pixel arrays (uint8 or float; H x W, H x W x C or C x H x W; one shape per column, or a
    pair of them per row with ``pair=True``), gathered from Arrow a batch at a time and converted to (C, H, W) of
    the wanted channels and size. With nothing to convert, a grey image keeps its stored (H, W) layout."""

    def __init__(self, dataset, column: str, where: str, channels: int | None, size: tuple[int, int] | None,
                 pair: bool = False):
        from hfstage.data.arrow import ArrayColumn

        self.raw = ArrayColumn(dataset, column, where)
        shape = self.raw.shape
        if pair and (len(shape) < 3 or shape[0] != 2):
            raise DataError(f"{where} must hold 2 x H x W images per row, got rows of shape {shape}")
        self.pair = pair
        image_shape = shape[1:] if pair else shape
        self.layout = image_layout(image_shape, where)
        native = (1, *image_shape) if self.layout == "hw" else (
            (image_shape[-1], *image_shape[:2]) if self.layout == "hwc" else tuple(image_shape))
        self.channels = channels or (3 if native[0] == 4 else native[0])
        self.size = tuple(size) if size else tuple(native[1:])
        self.native = native  # (C, H, W) as stored
        self.plain = self.layout == "hw" and self.channels == 1 and self.size == tuple(native[1:])
        self.dtype = self.raw.dtype if (self.channels, *self.size) == native else np.dtype(np.float32)
        self.shape = self.size if self.channels == 1 else (self.channels, *self.size)  # grey: H x W, as stored

    def __len__(self) -> int:
        return len(self.raw)

    def _convert(self, x: np.ndarray) -> np.ndarray:
        if self.plain:
            return x
        if self.pair:
            b = len(x)
            images = x.reshape(b * 2, *x.shape[2:])
            return convert_images(to_chw(images, self.layout), self.channels, self.size).reshape(b, 2, *self.shape)
        return convert_images(to_chw(x, self.layout), self.channels, self.size).reshape(len(x), *self.shape)

    def gather(self, indices) -> np.ndarray:
        return self._convert(self.raw.gather(indices))

    def check(self) -> None:
        """uint8 pixels, or other integers within 0-255, or finite floats (the stored values, before conversion)."""
        from hfstage.data import first_non_finite

        where, start = self.raw.where, 0
        floating = np.issubdtype(self.raw.dtype, np.floating)
        if not floating and self.raw.dtype != np.uint8 and not np.issubdtype(self.raw.dtype, np.integer):
            raise DataError(f"{where}: images must be uint8 or float, got {self.raw.dtype}")
        if self.raw.dtype == np.uint8:
            return
        for block in self.raw.blocks():
            if floating:
                bad = first_non_finite(block)
                if bad is not None:
                    raise DataError(f"{where}: images hold NaN or Inf (first at row {start + bad})")
            else:
                out = ((block < 0) | (block > 255)).reshape(len(block), -1).any(axis=1)
                if out.any():
                    raise DataError(f"{where}: integer images must be within 0-255 (row {start + int(np.argmax(out))})")
            start += len(block)

    def blocks(self):
        for block in self.raw.blocks():
            yield self._convert(block)


def image_reader(dataset, column: str, where: str, field: str, base: Path | None, channels: int | None = None,
                 size: tuple[int, int] | None = None, pair: bool = False):
    """The reader of an image field's column: encoded (``EncodedImages``) or pixel arrays (``ArrayImages``);
    ``where`` names the split."""
    import pyarrow as pa

    if not pair and is_encoded(dataset, column):
        return EncodedImages(dataset, column, where, field, base, channels, size)
    storage = dataset.data.column(column).type
    if isinstance(storage, pa.ExtensionType):
        storage = storage.storage_type
    if pa.types.is_struct(storage) or pa.types.is_string(storage) or pa.types.is_binary(storage):
        raise refuse(where, None, field, column, f"values of type {storage}", "image_pair" if pair else "image")
    return ArrayImages(dataset, column, f"{where}: column {column!r}", channels, size, pair)
