"""Data kinds: one module per on-disk format, plus ``prepare`` for the real data sets we ship recipes for."""

from __future__ import annotations

from hfstage.errors import ConfigError


def check_augmentation(registry, limits: dict[str, tuple[float, float]], augmentation: dict[str, float],
                       where: str) -> None:
    """Every augmentation a stage asks for exists in ``registry`` and its strength is within ``limits``."""
    for name, value in augmentation.items():
        registry.get(name, f"{where}.augmentation")
        lo, hi = limits[name]
        if not lo <= value <= hi:
            raise ConfigError(f"{where}.augmentation.{name}: {value} must be in [{lo}, {hi}]")


def class_order(names) -> list[str]:
    """Class names in the order their ids get: numbers by value first, then the rest alphabetically."""
    return sorted(set(names), key=lambda c: (not c.isdigit(), int(c) if c.isdigit() else 0, c))


def read_npz(path, field: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    """All arrays of an .npz file (never unpickling), refusing missing or unexpected keys by name."""
    import zipfile
    from pathlib import Path

    import numpy as np

    from hfstage.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found ({field})")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            missing = [k for k in required if k not in keys]
            if missing:
                raise DataError(f"{path}: missing key '{missing[0]}' (the file has: {', '.join(sorted(keys)) or 'nothing'})")
            extra = sorted(keys - set(required) - set(optional))
            if extra:
                raise DataError(f"{path}: unexpected key '{extra[0]}'; the file may hold only "
                                f"{', '.join(required + optional)}")
            return {k: npz[k] for k in keys}
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None


def first_non_finite(x) -> int | None:
    """Index of the first sample of ``x`` (N, ...) holding NaN or Inf, or None."""
    import numpy as np

    bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)
    return int(np.argmax(bad)) if bad.any() else None
