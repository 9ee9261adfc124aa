"""What a search leaves in its folder: the trials table (printed and ``trials.csv``), ``best.yaml``,
``history.png`` and ``importance.png``."""

from __future__ import annotations

import copy
import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hfstage.checkpoint import atomic_write, atomic_write_text
from hfstage.config import apply_override

TRIALS_CSV, BEST_YAML, HISTORY_PNG, IMPORTANCE_PNG = "trials.csv", "best.yaml", "history.png", "importance.png"


@dataclass
class TrialRow:
    """One trial as the table shows it."""

    trial: int
    params: dict[str, Any]
    metric: float | None  # a pruned trial's: its last reported value
    state: str  # complete, pruned, failed, running, waiting
    time_s: float | None = None
    pruned_at_step: int | None = None
    folder: str | None = None
    error: str | None = None
    stage: str | None = None  # the best trial: the stage folder that reached its metric
    test: dict = field(default_factory=dict)  # the best trial: that stage's test metrics (evaluated once)


def _cell(value: Any, full: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if full or not math.isfinite(value) else f"{value:.6g}"
    return str(value)


def table_rows(rows: list[TrialRow], metric: str, full: bool = False) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows; ``full``: every digit (trials.csv), else 6 significant ones (the printout)."""
    keys = sorted({k for r in rows for k in r.params})
    header = ["trial", *keys, metric, "state", "time_s", "pruned_at_step"]
    body = [[str(r.trial), *(_cell(r.params.get(k), full) for k in keys), _cell(r.metric, full), r.state,
             _cell(None if r.time_s is None else round(r.time_s, 1)), _cell(r.pruned_at_step)] for r in rows]
    return header, body


def format_table(rows: list[TrialRow], metric: str, best: int | None) -> str:
    header, body = table_rows(rows, metric)
    body = [[*line[:1], *line[1:], "*" if best is not None and line[0] == str(best) else ""] for line in body]
    header = [*header, "best"]
    widths = [max(len(h), *(len(line[i]) for line in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in body]
    return "\n".join(lines)


def write_csv(path: Path, rows: list[TrialRow], metric: str) -> None:
    header, body = table_rows(rows, metric, full=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(body)
    atomic_write_text(path, buffer.getvalue())


def value_text(value: Any) -> str:
    """A value as an override's right-hand side that YAML reads back as the same value (``1e-05`` is a float)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return text
    return str(value)


def with_values(raw: dict[str, Any], values: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The raw recipe with each stage's searched values written in (``model.*`` keys at the top level)."""
    out = copy.deepcopy(raw)
    for stage, params in values.items():
        for key, value in params.items():
            target = key if key.startswith("model.") else f"stages.{stage}.{key}"
            apply_override(out, f"{target}={value_text(value)}")
    return out


def tested_text(best: TrialRow) -> str:
    """``; on the test split (evaluated once): test_accuracy = ...`` for the printed result ('' without a test split)."""
    tested = ", ".join(f"{k} = {v:.6g}" for k, v in best.test.items() if isinstance(v, float))
    return f"; on the test split (evaluated once): {tested}" if tested else ""


def write_best_yaml(path: Path, raw: dict[str, Any], header: str) -> None:
    text = yaml.safe_dump(raw, sort_keys=False, default_flow_style=None)
    atomic_write_text(path, "".join(f"# {line}\n" for line in header.splitlines()) + text)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100), binary=True)
    _pyplot().close(fig)


def plot_history(path: Path, rows: list[TrialRow], metric: str, greater_is_better: bool) -> None:
    """Metric per trial (pruned ones marked x, at their last reported value) and the best so far."""
    fig, ax = _pyplot().subplots(figsize=(7, 4))
    done = [r for r in rows if r.state == "complete" and r.metric is not None]
    pruned = [r for r in rows if r.state == "pruned" and r.metric is not None and math.isfinite(r.metric)]
    ax.plot([r.trial for r in done], [r.metric for r in done], "o", color="tab:blue", label="complete")
    if pruned:
        ax.plot([r.trial for r in pruned], [r.metric for r in pruned], "x", color="tab:gray",
                label="pruned (last reported)")
    best, xs, ys = None, [], []
    for r in sorted(done, key=lambda r: r.trial):
        if best is None or (r.metric > best if greater_is_better else r.metric < best):
            best = r.metric
        xs.append(r.trial)
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.legend(loc="best")
    fig.tight_layout()
    _save(fig, path)


def plot_importance(path: Path, importances: dict[str, float], metric: str) -> None:
    names = list(importances)[::-1]
    fig, ax = _pyplot().subplots(figsize=(6, 1 + 0.4 * len(names)))
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel(f"importance for {metric} (Optuna, fANOVA)")
    fig.tight_layout()
    _save(fig, path)
