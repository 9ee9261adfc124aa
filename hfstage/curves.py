"""``curves.png``: a picture of the whole run on one global step axis.

Train and eval loss and the tracked metric, each stage shaded and named, stages not kept hatched. Drawn
from the stages' ``stage.json`` records (their ``log_history``), so it can be redrawn from a run folder
at any time; the curriculum redraws it after every stage.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hfstage.checkpoint import atomic_write
from hfstage.run_dir import CURVES_PNG  # noqa: F401  (the file's name, owned by the run folder's layout)

logger = logging.getLogger("hfstage")


def _series(records) -> dict[str, list[tuple[int, float]]]:
    """name -> [(global step, value)], from each stage's log events placed after the earlier stages' steps."""
    out: dict[str, list[tuple[int, float]]] = {}
    offset = 0
    for r in records:
        events = r.log_history or [{"step": r.global_steps or 0, **r.metrics}]
        for event in events:
            step = offset + int(event.get("step", 0))
            for key, value in event.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    out.setdefault(key, []).append((step, float(value)))
        offset += r.global_steps or 0
    return out


def draw_curves(path: str | Path, records, metric: str) -> Path | None:
    """Write the picture of ``records`` (the finished stages, in order) to ``path``; None when there is nothing to
    draw. A failure to draw is logged, never raised: the picture must not stop a run."""
    if not records:
        return None
    try:
        return _draw(Path(path), records, metric)
    except Exception as exc:  # noqa: BLE001
        logger.warning("could not draw %s: %s", path, exc)
        return None


def _draw(path: Path, records, metric: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = _series(records)
    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=100)
    start = 0
    for i, r in enumerate(records):
        end = start + max(r.global_steps or 0, 1)
        ax.axvspan(start, end, facecolor=("#e8eef8" if i % 2 == 0 else "#f6f6f6"), hatch=None if r.kept else "//",
                   alpha=1.0, zorder=0, edgecolor="#bbbbbb")
        ax.text((start + end) / 2, 1.01, f"{r.stage_index} {r.stage_name}" + ("" if r.kept else " (not kept)"),
                transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
        start = end
    for key, label, style in (("loss", "train loss", "-"), ("eval_loss", "eval loss", "o-")):
        if key in series:
            steps, values = zip(*series[key])
            ax.plot(steps, values, style, label=label, markersize=3, zorder=2)
    ax.set_xlabel("global step")
    ax.set_ylabel("loss")
    tracked = metric if metric.startswith("eval_") else f"eval_{metric}"
    if tracked != "eval_loss" and tracked in series:
        other = ax.twinx()
        steps, values = zip(*series[tracked])
        other.plot(steps, values, "s--", color="tab:green", markersize=3, label=tracked)
        other.set_ylabel(tracked)
        other.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_xlim(0, max(start, 1))
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png"), binary=True)
    plt.close(fig)
    return path
