"""The leaderboard of ``hfstage auto``: every model and the stack, with what it scored, what it cost and its share
of the stack (``DIR/leaderboard.csv``, printed, and in the card).

A run's scores are its best stage's ``eval_<metric>`` and ``test_<metric>`` (a ``train_on_eval`` refit's eval
metrics are in-sample: its eval score is the stage it started from); a k-fold bag's are its out-of-fold
accuracy (its CV) and the test accuracy of its folds' mean probabilities (other metrics: the folds' mean). Predict
time per sample is what the Trainer measured on the test split (else the eval split), summed over a bag's folds
and over a stack's members. A stack member's weight is what the saved meta-learner gives it: the averaging weights
(mean, ensemble selection), else its share of the logistic regression's absolute coefficients or of LightGBM's
gain.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from hfstage.checkpoint import atomic_write_text, read_json
from hfstage.reporting import format_number, format_table

COLUMNS = ("model", "kind", "recipe", "overrides", "eval_metric", "test_metric", "fit_seconds",
           "predict_ms_per_sample", "stack_weight", "final")
LEADERBOARD_CSV = "leaderboard.csv"


def _best_record(path: Path):
    from hfstage.run_dir import RunDir

    folder = RunDir(path)
    return folder.best() if folder.is_run() else None


def refitted(record) -> bool:
    """Whether the stage also trained on the eval split (``train_on_eval``): its eval metrics are in-sample."""
    return bool(record.extra.get("trained_on_eval"))


def answers_with_a_refit(path: Path) -> bool:
    """Whether the run at ``path`` (not a bag) answers with a refit stage: its eval predictions are in-sample."""
    record = _best_record(path)
    return record is not None and refitted(record)


def held_out(path: Path, record):
    """The record whose eval metrics speak for ``record``: itself, or for a ``train_on_eval`` refit (eval
    in-sample) the stage it started from, which chose on a held-out eval split."""
    from hfstage.run_dir import RunDir

    if not refitted(record):  # the common case: no second read of the run's stage records
        return record
    earlier = {r.dir: r for r in RunDir(path).records()}
    while refitted(record) and record.started_from in earlier:
        record = earlier[record.started_from]
    return record


def _bag_cv(path: Path) -> dict | None:
    from hfstage.run_dir import CV_JSON

    return read_json(path / CV_JSON) if (path / CV_JSON).is_file() else None


def score(model, metric: str, split: str = "eval") -> float | None:
    """The model's ``split`` (eval or test) value of ``metric``."""
    cv = _bag_cv(model.path) if model.kind == "bag" else None
    if cv is not None:
        if metric == "accuracy":
            return cv.get("oof_accuracy") if split == "eval" else cv.get("test_accuracy_fold_mean_ensemble")
        return cv.get(f"{split}_{metric}_mean")
    record = _best_record(model.path)
    if record is None:
        return None
    if split == "eval":  # a refit's eval is in-sample: the stage it started from was chosen on held-out data
        record = held_out(model.path, record)
    value = (record.metrics if split == "eval" else record.test_metrics).get(f"{split}_{metric}")
    tested = model.path / record.dir / "eval" / "test.json"
    if value is None and split == "test" and tested.is_file():  # a search trial: its stage was tested once, after
        value = read_json(tested)["metrics"].get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def run_folders(path: Path) -> list[Path]:
    """The run folders of a model: a k-fold bag's folds, or the run itself."""
    return sorted(path.glob("fold_*")) if (path / "fold_0").is_dir() else [path]


def run_records(path: Path) -> list:
    """Every finished stage's record under a run or bag folder."""
    from hfstage.run_dir import RunDir

    return [r for run in run_folders(path) if RunDir(run).is_run() for r in RunDir(run).records()]


def recorded_seconds(path: Path) -> float:
    """Training seconds of every finished stage under a run or bag folder (a model an earlier run trained)."""
    return float(sum(r.training_time_s for r in run_records(path)))


def predict_ms(path: Path) -> float | None:
    """Milliseconds per sample the best stage(s) took to predict the test (else eval) split."""
    from hfstage.run_dir import RunDir

    total = 0.0
    for run in run_folders(path):
        record = RunDir(run).best() if RunDir(run).is_run() else None
        if record is None:
            return None
        rate = record.test_metrics.get("test_samples_per_second") or record.metrics.get("eval_samples_per_second")
        if not rate:
            return None
        total += 1000.0 / float(rate)
    return total


def stack_weights(folder: Path) -> dict[str, float]:
    """Member reference -> its share of the saved meta-learner."""
    meta = read_json(folder / "stack_meta.json")
    refs = [b["reference"] for b in meta["base_models"]]
    kind, names = meta["meta_learner"], meta["features"]
    if kind in ("mean", "selection"):
        weights = read_json(folder / "meta_weights.json")["weights"]
        return dict(zip(refs, map(float, weights)))
    if kind == "logreg":
        importance = np.abs(np.atleast_2d(read_json(folder / "meta_logreg.json")["coef"])).sum(axis=0)
    else:
        import lightgbm as lgb

        importance = lgb.Booster(model_file=str(folder / "meta_model.txt")).feature_importance("gain")
    shares = np.zeros(len(refs))
    for name, value in zip(names, importance):
        head = name[1:].split("_")[0]
        if name.startswith("p") and head.isdigit():
            shares[int(head)] += float(value)
    total = shares.sum()
    return dict(zip(refs, (shares / total if total > 0 else shares).tolist()))


def leaderboard(auto, stack_result: dict | None, final: dict) -> list[dict[str, Any]]:
    """The rows: the stack (when there is one), then the models, best eval value first."""
    weights = stack_weights(Path(final["path"]) if final["kind"] == "stack" else auto.out / "stack") \
        if stack_result is not None else {}
    rows = []
    for model in auto.models.values():
        rows.append({"model": model.name, "kind": model.kind, "recipe": model.candidate,
                     "overrides": " ".join(model.overrides), "eval_metric": score(model, auto.metric, "eval"),
                     "test_metric": score(model, auto.metric, "test"), "fit_seconds": round(model.fit_seconds, 1),
                     "predict_ms_per_sample": predict_ms(model.path), "stack_weight": weights.get(str(model.path)),
                     "final": final["kind"] == "model" and final["path"] == str(model.path)})
    rows.sort(key=lambda r: auto._rank(r["eval_metric"]))
    if stack_result is not None:
        chosen = next(r for r in stack_result["methods"] if r.get("chosen"))
        members = [r for r in rows if r["stack_weight"] is not None]
        rows.insert(0, {"model": f"stack ({stack_result['meta_learner']})", "kind": "stack",
                        "recipe": f"stack of {len(members)}", "overrides": "meta=auto",
                        "eval_metric": chosen["cv_accuracy"] if auto.metric == "accuracy" else None,
                        "test_metric": chosen["test_accuracy"] if auto.metric == "accuracy" else None,
                        "fit_seconds": round(sum(r["fit_seconds"] for r in members)
                                             + chosen.get("cv_fit_seconds", 0), 1),
                        "predict_ms_per_sample": sum(r["predict_ms_per_sample"] or 0 for r in members) or None,
                        "stack_weight": 1.0, "final": final["kind"] == "stack"})
    return rows


def leaderboard_csv(rows: list[dict[str, Any]], metric: str) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = [c.replace("metric", metric) for c in COLUMNS]
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if row[c] is None else row[c] for c in COLUMNS])
    return buf.getvalue()


def format_leaderboard(rows: list[dict[str, Any]], metric: str) -> str:
    table = [("model", "kind", f"eval_{metric}", f"test_{metric}", "fit_s", "ms/sample", "weight", "final")]
    for r in rows:
        table.append((r["model"], r["kind"], format_number(r["eval_metric"]), format_number(r["test_metric"]),
                      f"{r['fit_seconds']:.0f}", "-" if r["predict_ms_per_sample"] is None else
                      f"{r['predict_ms_per_sample']:.3f}", "-" if r["stack_weight"] is None else
                      f"{r['stack_weight']:.2f}", "*" if r["final"] else ""))
    return format_table(table)


def write_leaderboard(out: Path, rows: list[dict[str, Any]], metric: str) -> None:
    atomic_write_text(out / LEADERBOARD_CSV, leaderboard_csv(rows, metric))
