"""Plain-text tables and the version stamp written into every run and evaluation."""

from __future__ import annotations

import platform


def format_table(rows: list[tuple]) -> str:
    """Left-aligned text columns; the first row is the header, underlined with dashes."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_number(value, digits: int = 4) -> str:
    """A metric for a table: fixed decimals, or '-' when there is none."""
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def versions() -> dict[str, str]:
    import accelerate
    import torch
    import transformers

    from hfstage.version import __version__

    return {
        "hfstage": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
    }


def lower_is_better(metric: str) -> bool:
    """Losses and error rates (``eval_loss``, ``eval_per``, ``..._wer``) are better when lower."""
    return metric.endswith(("loss", "_per", "_wer", "_cer", "error_rate"))


def flatten(data, prefix: str = "", number_mappings: bool = False) -> dict[str, object]:
    """A nested config as ``a.b.c`` keys. With ``number_mappings`` a list of mappings (the stages) is numbered from
    1, as overrides address stages (``stages.2.lr``); other lists are values."""
    if isinstance(data, dict):
        out: dict[str, object] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key), number_mappings))
        return out
    if number_mappings and isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        out = {}
        for i, value in enumerate(data, 1):
            out.update(flatten(value, f"{prefix}.{i}", number_mappings))
        return out
    return {prefix: data}

