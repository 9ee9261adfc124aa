"""Stack base models with a meta-learner: ``hfstage stack`` and ``hfstage predict --stack``.

The user's S2 procedure: every base model predicts the validation split (data none of them trained
on); a meta-learner (LightGBM or logistic regression) is trained on those predictions and scored by
stratified k-fold cross-validation on that split, then refitted on all of it and scored on the test
split. The same folds and the same test split score the simple ensembles it must beat: each base
model, the best single model (chosen on validation), the mean of probabilities and the majority vote.

A base model's predictions on data it trained on would leak its training fit into the meta-learner,
so ``stack`` compares data fingerprints and refuses, naming the model.

Binary tasks (one probability per model) in this version.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hfstage.checkpoint import (
    atomic_write_json,
    atomic_write_text,
    fingerprint,
    read_json,
)
from hfstage.errors import CheckpointError, ConfigError
from hfstage.evaluation import (
    Checkpoint,
    predict,
    predictions_csv,
    resolve_checkpoint,
    split_path,
)
from hfstage.reporting import format_table
from hfstage.tasks import TASKS

logger = logging.getLogger("hfstage")

META_LEARNERS = ("lightgbm", "logreg")
STACK_JSON = "stack.json"
META_JSON = "stack_meta.json"


@dataclass
class BaseModel:
    reference: str
    checkpoint: Checkpoint

    @property
    def name(self) -> str:
        return self.reference


def train_fingerprint(base: BaseModel) -> str:
    """SHA-256 of the data the base model trained on (recorded at training time, or recomputed)."""
    recorded = base.checkpoint.stage_record.get("train_data_sha256")
    if recorded:
        return recorded
    path = Path(base.checkpoint.data.path) / base.checkpoint.data.train_file
    if not path.is_file():
        raise CheckpointError(
            f"{base.reference}: its stage.json records no training-data fingerprint and {path} is gone, so a leak "
            "cannot be ruled out; retrain it with this hfstage version or restore its training file"
        )
    return fingerprint(path)


def check_no_leak(bases: list[BaseModel], files: dict[str, Path]) -> dict[str, str]:
    """Refuse in-sample predictions; returns each base model's training-data fingerprint by reference."""
    prints = {split: fingerprint(path) for split, path in files.items()}
    seen_by = {}
    for base in bases:
        seen = seen_by[base.reference] = train_fingerprint(base)
        for split, sha in prints.items():
            if sha == seen:
                raise ConfigError(
                    f"{base.reference}: trained on {files[split]} (same SHA-256), so its predictions on the "
                    f"{split} split are in-sample; stacking on them would leak. Use a split it never trained on."
                )
    return seen_by


def base_probabilities(bases: list[BaseModel], task, dataset, batch_size: int = 512) -> np.ndarray:
    """(N, n_models) probabilities of the positive class."""
    from accelerate import Accelerator

    from hfstage.devices import cpu_only

    accelerator = Accelerator(cpu=cpu_only())
    columns = []
    for base in bases:
        logits, _ = predict(accelerator, base.checkpoint, task, dataset, batch_size)
        columns.append(task.decide(logits.numpy())[1])
    return np.stack(columns, axis=1)


def _inputs(dataset) -> np.ndarray:
    """The original inputs in [0, 1], for ``passthrough``."""
    x = dataset.x.numpy()
    return x / 255.0 if x.dtype == np.uint8 else x


def meta_features(probs: np.ndarray, agreement: bool, passthrough: np.ndarray | None) -> tuple[np.ndarray, list[str]]:
    names = [f"p{i}" for i in range(probs.shape[1])]
    parts = [probs]
    if agreement:
        parts.append(np.stack([probs.std(axis=1), probs.max(axis=1), probs.min(axis=1)], axis=1))
        names += ["p_std", "p_max", "p_min"]
    if passthrough is not None:
        flat = passthrough.reshape(len(passthrough), -1).astype(np.float32)
        parts.append(flat)
        names += [f"x{i}" for i in range(flat.shape[1])]
    return np.concatenate(parts, axis=1), names


def make_meta_learner(kind: str, seed: int):
    if kind == "lightgbm":
        import lightgbm as lgb

        return lgb.LGBMClassifier(n_estimators=200, learning_rate=0.05, num_leaves=15, min_child_samples=20,
                                  subsample=0.8, subsample_freq=1, colsample_bytree=0.8, random_state=seed,
                                  deterministic=True, force_row_wise=True, n_jobs=2, verbose=-1)
    if kind == "logreg":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=1.0, max_iter=2000)
    raise ConfigError(f"--meta: unknown meta-learner {kind!r}; choose one of {', '.join(META_LEARNERS)}")


def cross_validated(kind: str, X: np.ndarray, y: np.ndarray, folds: int, seed: int) -> tuple[np.ndarray, float]:
    """Out-of-fold probabilities of the meta-learner on (X, y), and the total fit time."""
    from sklearn.model_selection import StratifiedKFold

    oof = np.zeros(len(y))
    seconds = 0.0
    for train_idx, held_idx in StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y):
        model = make_meta_learner(kind, seed)
        began = time.time()
        model.fit(X[train_idx], y[train_idx])
        seconds += time.time() - began
        oof[held_idx] = model.predict_proba(X[held_idx])[:, 1]
    return oof, seconds


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float(((probs > 0.5).astype(int) == y).mean())


def score_methods(names: list[str], p_train: np.ndarray, y: np.ndarray, p_test: np.ndarray, y_test: np.ndarray,
                  X: np.ndarray, X_test: np.ndarray, folds: int, seed: int) -> tuple[list[dict], dict]:
    """Every method on the same folds and test split; returns (rows, fitted meta-learners by kind).

    Base models and simple ensembles need no fitting, so their ``cv_accuracy`` is their accuracy on
    the whole meta-train split (the union of the folds).
    """
    rows = []
    for i, name in enumerate(names):
        rows.append({"method": f"base: {name}", "cv_accuracy": accuracy(p_train[:, i], y),
                     "test_accuracy": accuracy(p_test[:, i], y_test)})
    best = int(np.argmax([accuracy(p_train[:, i], y) for i in range(len(names))]))
    rows.append({"method": f"best single ({names[best]})", "cv_accuracy": accuracy(p_train[:, best], y),
                 "test_accuracy": accuracy(p_test[:, best], y_test)})
    rows.append({"method": "mean of probabilities", "cv_accuracy": accuracy(p_train.mean(1), y),
                 "test_accuracy": accuracy(p_test.mean(1), y_test)})
    rows.append({"method": "majority vote", "cv_accuracy": accuracy(majority_vote(p_train), y),
                 "test_accuracy": accuracy(majority_vote(p_test), y_test)})
    fitted = {}
    for kind in ("logreg", "lightgbm"):
        oof, cv_seconds = cross_validated(kind, X, y, folds, seed)
        model = make_meta_learner(kind, seed)
        began = time.time()
        model.fit(X, y)
        fit_seconds = time.time() - began
        fitted[kind] = model
        rows.append({"method": f"{kind} stack", "cv_accuracy": accuracy(oof, y),
                     "test_accuracy": accuracy(model.predict_proba(X_test)[:, 1], y_test),
                     "fit_seconds": round(fit_seconds, 3), "cv_fit_seconds": round(cv_seconds, 3)})
    return rows, fitted


def majority_vote(probs: np.ndarray) -> np.ndarray:
    """1.0 where more than half of the models say positive (a tie counts as negative)."""
    return ((probs > 0.5).mean(axis=1) > 0.5).astype(float)


def stack(models: list[str], out: str | Path, data_dir: str | None = None, meta: str = "lightgbm", folds: int = 5,
          agreement: bool = False, passthrough: bool = False, train_split: str = "val", test_split: str = "test",
          seed: int = 0) -> dict:
    """Fit and score the stack; writes stack.json, the meta-learner and its feature order into ``out``."""
    if meta not in META_LEARNERS:
        raise ConfigError(f"--meta: unknown meta-learner {meta!r}; choose one of {', '.join(META_LEARNERS)}")
    if folds < 2:
        raise ConfigError(f"--folds: {folds} must be >= 2")
    if len(models) < 2:
        raise ConfigError("--models: stacking needs at least two base models")
    bases = [BaseModel(ref, resolve_checkpoint(ref)) for ref in models]
    tasks = {b.checkpoint.task for b in bases}
    if len(tasks) != 1:
        raise ConfigError(f"--models: the base models solve different tasks ({', '.join(sorted(tasks))})")
    task_name = tasks.pop()
    if task_name != "pair_classification":
        raise ConfigError(f"--models: stacking supports binary tasks in this version, not {task_name!r}")
    task = TASKS.get(task_name, "task")()
    data = bases[0].checkpoint.data
    if data_dir is not None:
        data.path = data_dir
    files = {"meta-train": split_path(data, train_split), "test": split_path(data, test_split)}
    trained_on = check_no_leak(bases, files)
    train_set = task.load_split(files["meta-train"], f"--train-split {train_split}")
    test_set = task.load_split(files["test"], f"--test-split {test_split}")
    y, y_test = train_set.y.numpy(), test_set.y.numpy()

    logger.info("predicting %d base models on %s and %s", len(bases), files["meta-train"], files["test"])
    p_train = base_probabilities(bases, task, train_set)
    p_test = base_probabilities(bases, task, test_set)
    X, names = meta_features(p_train, agreement, _inputs(train_set) if passthrough else None)
    X_test, _ = meta_features(p_test, agreement, _inputs(test_set) if passthrough else None)

    rows, fitted = score_methods([b.name for b in bases], p_train, y, p_test, y_test, X, X_test, folds, seed)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta_record = {
        "format_version": 1,
        "meta_learner": meta,
        "task": task_name,
        "features": names,
        "agreement": agreement,
        "passthrough": passthrough,
        "base_models": [{"reference": b.reference, "stage_dir": str(b.checkpoint.stage_dir.resolve()),
                         "hub": b.checkpoint.reference,  # hf://...@<commit>/stage: found again on any machine
                         "train_data_sha256": trained_on[b.reference]} for b in bases],
        "folds": folds,
        "seed": seed,
    }
    save_meta_learner(fitted[meta], meta, out)
    atomic_write_json(out / META_JSON, meta_record)
    result = {"methods": rows, "meta_learner": meta, "folds": folds, "samples": {"meta_train": len(y), "test": len(y_test)},
              "data": {k: str(v) for k, v in files.items()}, "base_models": [b.reference for b in bases]}
    atomic_write_json(out / STACK_JSON, result)
    return result


def save_meta_learner(model, kind: str, out: Path) -> None:
    """LightGBM as its own text format; logistic regression as JSON coefficients (never pickle)."""
    if kind == "lightgbm":
        atomic_write_text(out / "meta_model.txt", model.booster_.model_to_string())
    else:
        atomic_write_json(out / "meta_logreg.json", {"coef": model.coef_[0].tolist(), "intercept": float(model.intercept_[0])})


def load_meta_predictor(out: Path, kind: str):
    if kind == "lightgbm":
        import lightgbm as lgb

        booster = lgb.Booster(model_file=str(out / "meta_model.txt"))
        return lambda X: booster.predict(X)
    params = read_json(out / "meta_logreg.json")
    coef, intercept = np.asarray(params["coef"]), params["intercept"]
    return lambda X: 1 / (1 + np.exp(-(X @ coef + intercept)))


def predict_with_stack(stack_dir: str | Path, data_dir: str, split: str = "test") -> tuple[dict, str]:
    """(summary, predictions CSV) of a saved stack on ``data_dir``'s split."""
    stack_dir = Path(stack_dir)
    if not (stack_dir / META_JSON).is_file():
        raise CheckpointError(f"{stack_dir}: no {META_JSON}; not a folder written by `hfstage stack`")
    meta = read_json(stack_dir / META_JSON)
    bases = [BaseModel(b["reference"], resolve_checkpoint(b.get("hub") or b["stage_dir"])) for b in meta["base_models"]]
    task = TASKS.get(meta["task"], "task")()
    data = bases[0].checkpoint.data
    data.path = data_dir
    file = split_path(data, split)
    check_no_leak(bases, {split: file})
    dataset = task.load_split(file, f"--split {split}")
    probs = base_probabilities(bases, task, dataset)
    X, names = meta_features(probs, meta["agreement"], _inputs(dataset) if meta["passthrough"] else None)
    if names != meta["features"]:
        raise CheckpointError(f"{stack_dir / META_JSON}: the features do not match what the stack was fitted on")
    p = load_meta_predictor(stack_dir, meta["meta_learner"])(X)
    labels = dataset.y.numpy()
    summary = {"samples": len(labels), "accuracy": accuracy(p, labels), "data_file": str(file)}
    return summary, predictions_csv((p > 0.5).astype(int), labels, p)


def format_stack(result: dict) -> str:
    rows = [("method", "cv_accuracy", "test_accuracy", "fit_s")]
    for r in result["methods"]:
        rows.append((r["method"], f"{r['cv_accuracy']:.4f}", f"{r['test_accuracy']:.4f}",
                     f"{r['fit_seconds']:.2f}" if "fit_seconds" in r else "-"))
    return format_table(rows) + f"\n(cv: {result['folds']}-fold on {result['samples']['meta_train']} samples of the meta-train split)"
