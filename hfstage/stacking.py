"""Stack base models with a meta-learner: ``hfstage stack`` and ``hfstage predict --stack``.

Every base model predicts the validation split (data none of them trained
on); a meta-learner (LightGBM or logistic regression) is trained on those predictions and scored by
stratified k-fold cross-validation on that split, then refitted on all of it and scored on the test
split. The same folds and the same test split score the simple ensembles it must beat: each base
model, the best single model (chosen on validation), the mean of probabilities and the majority vote.

A base model's predictions on data it trained on would leak its training fit into the meta-learner,
so ``stack`` compares data fingerprints and refuses, naming the model.

Base models trained with ``folds`` contribute their saved out-of-fold probabilities instead: when
every base model is a k-fold run, the meta-learner trains on the training split's out-of-fold
predictions. Binary tasks give one feature per model, multi-class tasks one per model and class.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hfstage.checkpoint import (
    atomic_save_npz,
    atomic_write_json,
    atomic_write_text,
    read_json,
)
from hfstage.data.sources import SplitRef, split_fingerprint, split_ref
from hfstage.errors import CheckpointError, ConfigError
from hfstage.evaluation import checkpoint_task, eval_record, predict, predictions_csv, split_path
from hfstage.folds import labels_of
from hfstage.reporting import format_table
from hfstage.resolve import Checkpoint, fold_checkpoints, resolve_checkpoint

logger = logging.getLogger("hfstage")

META_LEARNERS = ("mean", "selection", "logreg", "lightgbm")
META_CHOICES = (*META_LEARNERS, "auto")
STACK_JSON = "stack.json"
META_JSON = "stack_meta.json"
PREDICTIONS_NPZ = "predictions.npz"


@dataclass
class BaseModel:
    """One base model: a stage, a run's best stage, or a k-fold run (its folds' best stages, averaged)."""

    reference: str
    checkpoints: list[Checkpoint]
    cv: dict | None = None  # cv.json of a k-fold run

    @property
    def name(self) -> str:
        return self.reference

    @property
    def checkpoint(self) -> Checkpoint:
        return self.checkpoints[0]


def resolve_base(reference: str) -> BaseModel:
    folded = fold_checkpoints(reference)
    if folded is not None:
        return BaseModel(reference, *folded)
    return BaseModel(reference, [resolve_checkpoint(reference)])


def train_fingerprint(base: BaseModel) -> str:
    """SHA-256 of the data the base model trained on (recorded at training time, or recomputed)."""
    recorded = base.checkpoint.stage_record.train_data_sha256
    if recorded:
        return recorded
    data = base.checkpoint.data
    ref = split_ref(data, data.train_file, "data.train_file")
    if not ref.dataset and not ref.path.exists():
        raise CheckpointError(
            f"{base.reference}: its stage.json records no training-data fingerprint and {ref.path} is gone, so a leak "
            "cannot be ruled out; retrain it with this hfstage version or restore its training file"
        )
    return split_fingerprint(ref)


def refit_fingerprint(base: BaseModel) -> str | None:
    """SHA-256 of the eval split a ``train_on_eval`` stage also trained on (None: it did not)."""
    refit = base.checkpoint.stage_record.extra.get("trained_on_eval") or {}
    return refit.get("eval_data_sha256")


def check_no_leak(bases: list[BaseModel], files: dict[str, SplitRef]) -> dict[str, str]:
    """Refuse in-sample predictions; returns each base model's training-data fingerprint by reference."""
    prints = {split: split_fingerprint(ref) for split, ref in files.items()}
    seen_by = {}
    for base in bases:
        seen = seen_by[base.reference] = train_fingerprint(base)
        refit = refit_fingerprint(base)
        for split, sha in prints.items():
            if sha in (seen, refit):
                how = "trained on" if sha == seen else "was refitted on its eval split,"
                raise ConfigError(
                    f"{base.reference}: {how} {files[split]} (same SHA-256), so its predictions on the "
                    f"{split} split are in-sample; stacking on them would leak. Use a split it never trained on"
                    + (" or a stage before its train_on_eval stage." if sha == refit else ".")
                )
    return seen_by


def base_probabilities(bases: list[BaseModel], task, dataset, batch_size: int = 512) -> np.ndarray:
    """(N, M) positive-class probabilities (binary) or (N, M, C) class probabilities, M = base models.

    A k-fold base model is the mean of its folds' probabilities.
    """
    from accelerate import Accelerator

    from hfstage.devices import cpu_only

    accelerator = Accelerator(cpu=cpu_only())
    columns = []
    for base in bases:
        probs = [task.decide(predict(accelerator, c, task, dataset, batch_size)[0].numpy())[1] for c in base.checkpoints]
        columns.append(np.mean(probs, axis=0))
    return np.stack(columns, axis=1)


def _inputs(dataset) -> np.ndarray:
    """The original inputs in [0, 1], for ``passthrough``."""
    if not hasattr(dataset, "x"):
        raise ConfigError("--passthrough: the original inputs are only available for array (.npz) data")
    x = dataset.x.numpy() if hasattr(dataset.x, "numpy") else np.asarray(dataset.x)
    return x / 255.0 if x.dtype == np.uint8 else x


def meta_features(probs: np.ndarray, agreement: bool, passthrough: np.ndarray | None) -> tuple[np.ndarray, list[str]]:
    """Binary (N, M): one feature per model; multi-class (N, M, C): one per model and class. ``agreement``
    adds the std, max and min over the models (per class)."""
    if probs.ndim == 2:
        names = [f"p{i}" for i in range(probs.shape[1])]
        parts = [probs]
        suffixes = [""]
    else:
        n, m, c = probs.shape
        names = [f"p{i}_{k}" for i in range(m) for k in range(c)]
        parts = [probs.reshape(n, m * c)]
        suffixes = [f"_{k}" for k in range(c)]
    if agreement:
        for stat in ("std", "max", "min"):
            parts.append(np.atleast_2d(getattr(probs, stat)(axis=1).T).T if probs.ndim == 2 else getattr(probs, stat)(axis=1))
            names += [f"p_{stat}{s}" for s in suffixes]
    if passthrough is not None:
        flat = passthrough.reshape(len(passthrough), -1).astype(np.float32)
        parts.append(flat)
        names += [f"x{i}" for i in range(flat.shape[1])]
    return np.concatenate([p.reshape(len(p), -1) for p in parts], axis=1), names


class ProbabilityAverage:
    """A weighted mean of the base models' probabilities: ``mean`` (equal weights) or Caruana et al.'s greedy
    ensemble selection (``selection``, what AutoGluon's WeightedEnsemble does): start empty and, ``rounds``
    times, add (with replacement) the base model whose addition gives the lowest log-loss on the meta-train
    split; the weights are how often each was added. It reads the base probabilities, not the meta-features."""

    uses_probabilities = True

    def __init__(self, kind: str, rounds: int = 50):
        self.kind, self.rounds = kind, rounds
        self.weights: np.ndarray | None = None

    def fit(self, probs: np.ndarray, y: np.ndarray) -> "ProbabilityAverage":
        m = probs.shape[1]
        if self.kind == "mean":
            self.weights = np.full(m, 1.0 / m)
            return self
        counts = np.zeros(m)
        total = np.zeros_like(probs[:, 0], dtype=np.float64)
        for step in range(1, self.rounds + 1):
            losses = [log_loss((total + probs[:, i]) / step, y) for i in range(m)]
            best = int(np.argmin(losses))  # ties: the first (earlier models)
            counts[best] += 1
            total += probs[:, best]
        self.weights = counts / counts.sum()
        return self

    def predict(self, probs: np.ndarray) -> np.ndarray:
        return np.tensordot(self.weights, np.moveaxis(probs, 1, 0), axes=1)


def log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the labels; binary (N,) positive-class or (N, C) probabilities."""
    eps = 1e-7
    p = probs if probs.ndim == 1 else probs[np.arange(len(y)), y]
    if probs.ndim == 1:
        p = np.where(y == 1, p, 1 - p)
    return float(-np.log(np.clip(p, eps, 1.0)).mean())


def make_meta_learner(kind: str, seed: int):
    if kind in ("mean", "selection"):
        return ProbabilityAverage(kind)
    if kind == "lightgbm":
        import lightgbm as lgb

        from hfstage.models.estimator import lightgbm_threads

        return lgb.LGBMClassifier(n_estimators=200, learning_rate=0.05, num_leaves=15, min_child_samples=20,
                                  subsample=0.8, subsample_freq=1, colsample_bytree=0.8, random_state=seed,
                                  deterministic=True, force_row_wise=True, n_jobs=lightgbm_threads(), verbose=-1)
    if kind == "logreg":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=1.0, max_iter=2000)
    raise ConfigError(f"--meta: unknown meta-learner {kind!r}; choose one of {', '.join(META_CHOICES)}")


def fit_meta(model, X: np.ndarray, probs: np.ndarray, y: np.ndarray):
    return model.fit(probs, y) if getattr(model, "uses_probabilities", False) else model.fit(X, y)


def meta_proba(model, X: np.ndarray, n_classes: int | None, probs: np.ndarray | None = None) -> np.ndarray:
    """(N,) positive-class probabilities (binary, ``n_classes`` None) or (N, C), whatever classes it saw."""
    if getattr(model, "uses_probabilities", False):
        return model.predict(probs)
    proba = model.predict_proba(X)
    classes = list(model.classes_)
    if n_classes is None:
        return proba[:, classes.index(1)] if 1 in classes else np.zeros(len(X))
    out = np.zeros((len(X), n_classes))
    out[:, classes] = proba
    return out


def cross_validated(kind: str, X: np.ndarray, y: np.ndarray, folds: int, seed: int,
                    n_classes: int | None = None, probs: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Out-of-fold probabilities of the meta-learner on (X, y) (``probs``: the base probabilities, which
    ``mean`` and ``selection`` read), and the total fit time. Everything a meta-learner chooses (selection's
    weights included) is chosen inside the training folds only."""
    from sklearn.model_selection import StratifiedKFold

    probs = X if probs is None else probs
    oof = np.zeros(len(y)) if n_classes is None else np.zeros((len(y), n_classes))
    seconds = 0.0
    for train_idx, held_idx in StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y):
        model = make_meta_learner(kind, seed)
        began = time.time()
        fit_meta(model, X[train_idx], probs[train_idx], y[train_idx])
        seconds += time.time() - began
        oof[held_idx] = meta_proba(model, X[held_idx], n_classes, probs[held_idx])
    return oof, seconds


def predicted(probs: np.ndarray) -> np.ndarray:
    return probs.argmax(axis=1) if probs.ndim == 2 else (probs > 0.5).astype(int)


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float((predicted(probs) == y).mean())


STACK_METHODS = {"mean": "mean of probabilities", "selection": "ensemble selection", "logreg": "logreg stack",
                 "lightgbm": "lightgbm stack"}


def score_methods(names: list[str], p_train: np.ndarray, y: np.ndarray, p_test: np.ndarray, y_test: np.ndarray,
                  X: np.ndarray, X_test: np.ndarray, folds: int, seed: int) -> tuple[list[dict], dict]:
    """Every method on the same folds and test split; returns (rows, fitted meta-learners by kind).

    Base models need no fitting, so their ``cv_accuracy`` is their accuracy on the whole meta-train split
    (the union of the folds). Every meta-learner (``mean``, ``selection``, ``logreg``, ``lightgbm``) is
    scored by k-fold cross-validation on the meta-train split (its ``cv_accuracy``, what ``--meta auto``
    chooses by), then refitted on all of it.
    """
    n_classes = p_train.shape[2] if p_train.ndim == 3 else None
    rows = []
    for i, name in enumerate(names):
        rows.append({"method": f"base: {name}", "cv_accuracy": accuracy(p_train[:, i], y),
                     "test_accuracy": accuracy(p_test[:, i], y_test)})
    best = int(np.argmax([accuracy(p_train[:, i], y) for i in range(len(names))]))
    rows.append({"method": f"best single ({names[best]})", "cv_accuracy": accuracy(p_train[:, best], y),
                 "test_accuracy": accuracy(p_test[:, best], y_test)})
    rows.append({"method": "majority vote", "cv_accuracy": accuracy(majority_vote(p_train), y),
                 "test_accuracy": accuracy(majority_vote(p_test), y_test)})
    fitted = {}
    for kind, label in STACK_METHODS.items():
        oof, cv_seconds = cross_validated(kind, X, y, folds, seed, n_classes, p_train)
        model = make_meta_learner(kind, seed)
        began = time.time()
        fit_meta(model, X, p_train, y)
        fit_seconds = time.time() - began
        fitted[kind] = model
        rows.append({"method": label, "meta": kind, "cv_accuracy": accuracy(oof, y),
                     "cv_log_loss": round(log_loss(oof, y), 6),
                     "test_accuracy": accuracy(meta_proba(model, X_test, n_classes, p_test), y_test),
                     "fit_seconds": round(fit_seconds, 3), "cv_fit_seconds": round(cv_seconds, 3)})
    return rows, fitted


def choose_meta(rows: list[dict], samples: int) -> str:
    """``--meta auto``: of the meta-learners whose cross-validated accuracy on the ``samples`` meta-train samples
    is within one standard error (binomial, sqrt(a (1 - a) / n)) of the best one's - a tie on accuracy, given fold
    noise - the one with the lowest cross-validated log-loss (a proper score, far less noisy than accuracy on a
    small split); an equal log-loss goes to the simpler one (mean, selection, logreg, lightgbm)."""
    candidates = [r for r in rows if r.get("meta")]
    order = list(STACK_METHODS)
    top = max(r["cv_accuracy"] for r in candidates)
    margin = float(np.sqrt(top * (1 - top) / max(samples, 1)))
    close = [r for r in candidates if r["cv_accuracy"] >= top - margin - 1e-12]
    return min(close, key=lambda r: (r["cv_log_loss"], order.index(r["meta"])))["meta"]


def majority_vote(probs: np.ndarray) -> np.ndarray:
    """Binary (N, M): 1.0 where more than half of the models say positive (a tie counts as negative).
    Multi-class (N, M, C): each class's share of the votes (N, C); a tie goes to the higher mean probability."""
    if probs.ndim == 2:
        return ((probs > 0.5).mean(axis=1) > 0.5).astype(float)
    votes = probs.argmax(axis=2)
    counts = np.stack([(votes == c).sum(axis=1) for c in range(probs.shape[2])], axis=1).astype(float)
    counts += 1e-6 * probs.mean(axis=1)
    return counts / counts.sum(axis=1, keepdims=True)


def _oof_arrays(base: BaseModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    root = Path(base.reference)
    try:
        return tuple(np.load(root / f, allow_pickle=False) for f in ("oof.npy", "oof_ids.npy", "oof_labels.npy"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{base.reference}: its out-of-fold files are unreadable ({exc}); rerun its config") from None


def out_of_fold_inputs(bases: list[BaseModel]) -> tuple[np.ndarray, np.ndarray]:
    """(p_train (N, M[, C]), y) from the k-fold bases' saved out-of-fold files, checked to cover the same
    samples in the same order with the same labels."""
    columns, first_ids, y = [], None, None
    for base in bases:
        oof, ids, labels = _oof_arrays(base)
        if first_ids is None:
            first_ids, y = ids, labels
        elif len(ids) != len(first_ids) or (ids != first_ids).any() or (labels != y).any():
            raise ConfigError(f"--models: {base.reference}'s out-of-fold predictions cover other training samples "
                              f"(or another order or labels) than {bases[0].reference}'s; stack runs of one data set")
        columns.append(oof)
    return np.stack(columns, axis=1), y


def stack(models: list[str], out: str | Path, data_dir: str | None = None, meta: str = "auto", folds: int = 5,
          agreement: bool = False, passthrough: bool = False, train_split: str | None = None, test_split: str = "test",
          seed: int = 0, meta_train_samples: int | None = None) -> dict:
    """Fit and score the stack; writes stack.json, the meta-learner and its feature order into ``out``.

    When every base model is a k-fold run, the meta-learner trains on their out-of-fold predictions of
    the training split (``oof.npy``); otherwise every base model predicts ``train_split`` (k-fold runs
    through the mean of their folds: none of them trained on it; default ``val``), or its first
    ``meta_train_samples``.
    """
    if meta not in META_CHOICES:
        raise ConfigError(f"--meta: unknown meta-learner {meta!r}; choose one of {', '.join(META_CHOICES)}")
    if folds < 2:
        raise ConfigError(f"--folds: {folds} must be >= 2")
    if len(models) < 2:
        raise ConfigError("--models: stacking needs at least two base models")
    bases = [resolve_base(ref) for ref in models]
    tasks = {b.checkpoint.task for b in bases}
    if len(tasks) != 1:
        raise ConfigError(f"--models: the base models solve different tasks ({', '.join(sorted(tasks))})")
    task_name = tasks.pop()
    task = checkpoint_task(bases[0].checkpoint)
    data = bases[0].checkpoint.data
    if data_dir is not None:
        data.path = data_dir
    use_oof = all(b.cv is not None for b in bases)
    if use_oof and train_split is not None:
        raise ConfigError(f"train_split {train_split!r}: every base is a k-fold run, so the meta-learner trains on "
                          "their out-of-fold predictions of the whole training split; leave train_split out")
    train_split = train_split or "val"
    if use_oof and meta_train_samples is not None:
        raise ConfigError("meta_train_samples: every base is a k-fold run, so the meta-learner trains on their "
                          "out-of-fold predictions of the whole training split; limit data.max_train_samples instead")
    files = {"test": split_path(data, test_split)}
    if use_oof:
        files["meta-train (out-of-fold)"] = split_path(data, "train")
        trained_on = check_no_leak(bases, {"test": files["test"]})
    else:
        files["meta-train"] = split_path(data, train_split)
        trained_on = check_no_leak(bases, files)
    test_set = task.load_split(files["test"], f"--test-split {test_split}")
    y_test = _labels(test_set)
    if use_oof:
        logger.info("stacking the out-of-fold predictions of %d k-fold runs; predicting %s", len(bases), files["test"])
        p_train, y = out_of_fold_inputs(bases)
        train_set = task.load_split(files["meta-train (out-of-fold)"], "data.train_file") if passthrough else None
    else:
        train_set = task.load_split(files["meta-train"], f"--train-split {train_split}", meta_train_samples)
        y = _labels(train_set)
        logger.info("predicting %d base models on %s and %s", len(bases), files["meta-train"], files["test"])
        p_train = base_probabilities(bases, task, train_set)
    p_test = base_probabilities(bases, task, test_set)
    if p_train.shape[1:] != p_test.shape[1:]:
        raise ConfigError(f"--models: the base models' saved predictions have shape {p_train.shape[1:]} but they "
                          f"predict {p_test.shape[1:]} now; rerun the k-fold runs")
    X, names = meta_features(p_train, agreement, _inputs(train_set) if passthrough else None)
    X_test, _ = meta_features(p_test, agreement, _inputs(test_set) if passthrough else None)

    rows, fitted = score_methods([b.name for b in bases], p_train, y, p_test, y_test, X, X_test, folds, seed)
    chosen = choose_meta(rows, len(y)) if meta == "auto" else meta
    for row in rows:
        if row.get("meta") == chosen:
            row["chosen"] = True

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta_record = {
        "format_version": 2,
        "meta_learner": chosen,
        "meta_requested": meta,
        "task": task_name,
        "classes": None if p_train.ndim == 2 else int(p_train.shape[2]),
        "features": names,
        "agreement": agreement,
        "passthrough": passthrough,
        "meta_train": "out-of-fold" if use_oof else train_split,
        "meta_train_samples": int(len(y)),
        "base_models": [{"reference": b.reference, "kfold": b.cv is not None,
                         "stage_dirs": [str(c.stage_dir.resolve()) for c in b.checkpoints],
                         "hub": b.checkpoint.reference,  # hf://...@<commit>/stage: found again on any machine
                         "train_data_sha256": trained_on[b.reference]} for b in bases],
        "folds": folds,
        "seed": seed,
    }
    save_meta_learner(fitted[chosen], chosen, out)
    # the base models' probabilities (meta-train and test) and labels, to try other meta-learners on
    atomic_save_npz(out / PREDICTIONS_NPZ, meta_train=p_train, meta_train_labels=y, test=p_test, test_labels=y_test,
                    models=np.array([b.reference for b in bases]))
    atomic_write_json(out / META_JSON, meta_record)
    result = {"methods": rows, "meta_learner": chosen, "meta_requested": meta, "folds": folds, "meta_train": meta_record["meta_train"],
              "samples": {"meta_train": len(y), "test": len(y_test)},
              "data": {k: str(v) for k, v in files.items()}, "base_models": [b.reference for b in bases]}
    atomic_write_json(out / STACK_JSON, result)
    return result


def _labels(dataset) -> np.ndarray:
    return labels_of(dataset)


def save_meta_learner(model, kind: str, out: Path) -> None:
    """LightGBM as its own text format; logistic regression as JSON coefficients, a probability average as its
    weights (never pickle)."""
    if kind in ("mean", "selection"):
        atomic_write_json(out / "meta_weights.json", {"kind": kind, "weights": model.weights.tolist()})
    elif kind == "lightgbm":
        atomic_write_text(out / "meta_model.txt", model.booster_.model_to_string())
        atomic_write_json(out / "meta_classes.json", [int(c) for c in model.classes_])
    else:
        atomic_write_json(out / "meta_logreg.json", {"coef": model.coef_.tolist(), "intercept": model.intercept_.tolist(),
                                                     "classes": [int(c) for c in model.classes_]})


def load_meta_predictor(out: Path, kind: str, n_classes: int | None = None):
    """(X, base probabilities) -> (N,) positive-class probabilities (binary) or (N, C)."""
    if kind in ("mean", "selection"):
        model = ProbabilityAverage(kind)
        model.weights = np.asarray(read_json(out / "meta_weights.json")["weights"])
        return lambda X, probs: model.predict(probs)
    predictor = _load_feature_predictor(out, kind, n_classes)
    return lambda X, probs: predictor(X)


def _load_feature_predictor(out: Path, kind: str, n_classes: int | None):
    def spread(p: np.ndarray, classes: list[int]) -> np.ndarray:
        if n_classes is None:
            return p
        full = np.zeros((len(p), n_classes))
        full[:, classes] = p
        return full

    if kind == "lightgbm":
        import lightgbm as lgb

        booster = lgb.Booster(model_file=str(out / "meta_model.txt"))
        classes = read_json(out / "meta_classes.json") if (out / "meta_classes.json").is_file() else [0, 1]
        return lambda X: spread(booster.predict(X), classes)
    params = read_json(out / "meta_logreg.json")
    coef, intercept = np.atleast_2d(params["coef"]), np.atleast_1d(params["intercept"])
    classes = params.get("classes", [0, 1])
    if coef.shape[0] == 1:
        return lambda X: 1 / (1 + np.exp(-(X @ coef[0] + intercept[0])))

    def softmax(X):
        z = X @ coef.T + intercept
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return spread(z / z.sum(axis=1, keepdims=True), classes)

    return softmax


def predict_with_stack(stack_dir: str | Path, data_dir: str | None, split: str = "test") -> tuple[dict, str]:
    """(summary, predictions CSV) of a saved stack on ``data_dir``'s split (default: the base models' data)."""
    stack_dir = Path(stack_dir)
    if not (stack_dir / META_JSON).is_file():
        raise CheckpointError(f"{stack_dir}: no {META_JSON}; not a folder written by `hfstage stack`")
    meta = read_json(stack_dir / META_JSON)
    bases = [resolve_base(str(_located(stack_dir, meta, b["reference"]))) if b.get("kfold") else
             BaseModel(b["reference"], [resolve_checkpoint(b.get("hub") or _located(stack_dir, meta, _stage_dir(b)))])
             for b in meta["base_models"]]
    task = checkpoint_task(bases[0].checkpoint)
    data = bases[0].checkpoint.data
    if data_dir is not None:
        data.path = data_dir
    file = split_path(data, split)
    check_no_leak(bases, {split: file})
    dataset = task.load_split(file, f"--split {split}")
    probs = base_probabilities(bases, task, dataset)
    X, names = meta_features(probs, meta["agreement"], _inputs(dataset) if meta["passthrough"] else None)
    if names != meta["features"]:
        raise CheckpointError(f"{stack_dir / META_JSON}: the features do not match what the stack was fitted on")
    p = load_meta_predictor(stack_dir, meta["meta_learner"], meta.get("classes"))(X, probs)
    labels = _labels(dataset)
    summary = {"samples": len(labels), "accuracy": accuracy(p, labels), "log_loss": log_loss(p, labels),
               "data_file": str(file), "data_sha256": split_fingerprint(file),  # cached by the leak check
               "task": meta["task"], "meta_learner": meta["meta_learner"]}
    return summary, predictions_csv(predicted(p), labels, p)


def _stage_dir(entry: dict) -> str:
    return (entry.get("stage_dirs") or [entry.get("stage_dir")])[0]


def _located(stack_dir: Path, meta: dict, path: str) -> Path:
    """A member's path as ``stack_meta.json`` records it: relative to the stack folder in a pushed ``hfstage auto``
    answer (``relative_paths``), as given (absolute stage folders) otherwise."""
    return Path(stack_dir) / path if meta.get("relative_paths") else Path(path)


def stack_members(stack_dir: str | Path, meta: dict) -> list[Path]:
    """The folder of each base model: a k-fold run, or the run holding the stage it uses."""
    return [_located(Path(stack_dir), meta, b["reference"] if b.get("kfold") else str(Path(_stage_dir(b)).parent))
            for b in meta["base_models"]]


def is_stack(path: str | Path) -> bool:
    return (Path(path) / META_JSON).is_file()


def evaluate_stack(path: str | Path, data_dir: str | None = None, split: str = "test", save_predictions: bool = False,
                   out: str | None = None) -> dict:
    """``hfstage evaluate STACK_DIR``: the saved stack's accuracy (and log-loss) on a split, written to
    ``<stack>/eval/<split>.json`` in the form a stage's evaluation has."""
    began = time.time()
    summary, table = predict_with_stack(path, data_dir, split)
    result = eval_record(str(path), f"stack ({summary['meta_learner']})", summary["task"], split,
                         summary["data_file"], summary["data_sha256"], summary["samples"],
                         {"loss": summary["log_loss"], "accuracy": summary["accuracy"]}, began, 1)
    eval_dir = Path(out) if out else Path(path) / "eval"
    atomic_write_json(eval_dir / f"{split}.json", result)
    if save_predictions:
        atomic_write_text(eval_dir / f"{split}_predictions.csv", table)
    return result


def format_stack(result: dict) -> str:
    rows = [("method", "cv_accuracy", "test_accuracy", "fit_s", "saved")]
    for r in result["methods"]:
        rows.append((r["method"], f"{r['cv_accuracy']:.4f}", f"{r['test_accuracy']:.4f}",
                     f"{r['fit_seconds']:.2f}" if "fit_seconds" in r else "-", "*" if r.get("chosen") else ""))
    how = ("chosen by CV (--meta auto: the lowest log-loss of those within one standard error of the best accuracy)"
           if result.get("meta_requested") == "auto" else "as asked")
    return (format_table(rows) + f"\n(cv: {result['folds']}-fold on {result['samples']['meta_train']} samples of the "
            f"meta-train split; saved meta-learner: {result['meta_learner']}, {how})")
