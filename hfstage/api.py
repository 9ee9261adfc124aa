"""hfstage from Python: ``hfstage.train(config, train_dataset=..., eval_dataset=..., test_dataset=...)``.

``config`` is a recipe file, a mapping of recipe fields, or a ``RunConfig``; ``overrides`` are ``key=value``
strings as on the command line. Without datasets this is ``hfstage train``. With ``datasets.Dataset`` objects
(any task kind) the run trains on them instead of ``data.path``, with the same column rules and
``data.columns`` as any ``datasets`` source; the run records ``data.path`` as ``<datasets passed to
hfstage.train>`` and the training set's fingerprint, so stacking can still refuse leaks.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from hfstage.callbacks import StageCallback
from hfstage.config import RunConfig, apply_override, build_run_config, load_config
from hfstage.curriculum import run
from hfstage.data.sources import dataset_fingerprint
from hfstage.errors import ConfigError
from hfstage.sweeps import run_seeds
from hfstage.tasks import TASKS

PASSED_IN = "<datasets passed to hfstage.train>"


def _config(config: str | Path | dict[str, Any] | RunConfig, overrides: Sequence[str]) -> tuple[RunConfig, str | None]:
    if isinstance(config, RunConfig):
        if overrides:
            raise ConfigError("train: overrides apply to a recipe file or mapping; change the RunConfig itself")
        return config, None
    if isinstance(config, dict):
        raw = {k: v for k, v in config.items()}
        for text in overrides:
            apply_override(raw, text)
        return build_run_config(raw, "<config>"), None
    return load_config(config, list(overrides)), str(config)


def train(config: str | Path | dict[str, Any] | RunConfig, train_dataset=None, eval_dataset=None, test_dataset=None,
          overrides: Sequence[str] = (), callbacks: Sequence[StageCallback] = ()):
    """Run (or resume) a recipe. Returns the final run record (``RunRecord``; with ``seeds`` a list of them, one
    per seed; with ``folds`` the CV summary), like the command line's ``hfstage train``."""
    cfg, config_file = _config(config, overrides)
    if train_dataset is None and eval_dataset is None and test_dataset is None:
        finals = run_seeds(cfg, config_file, callbacks)
        return finals if cfg.seeds else finals[0]
    if train_dataset is None or eval_dataset is None:
        raise ConfigError("train: give train_dataset and eval_dataset together (test_dataset is optional)")
    if cfg.folds or cfg.seeds:
        raise ConfigError("train: folds and seeds read data.path; with datasets passed in, train one run per call")
    task = TASKS.get(cfg.task, "task")()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=PASSED_IN))
    splits = task.load_splits(cfg.data, given={"train": train_dataset, "eval": eval_dataset, "test": test_dataset},
                              model=cfg.model)
    splits.train_sha256 = dataset_fingerprint(train_dataset)
    splits.eval_sha256 = dataset_fingerprint(eval_dataset)
    return run(cfg, config_file, callbacks, splits=splits, task=task)


def predict(runs: Sequence[str] = (), images: str | Path | None = None, out: str | Path | None = None, *,
            stack: str | Path | None = None, data: str | None = None, split: str = "test", tta: int = 1,
            proba: bool = False, batch_size: int = 256) -> dict:
    """``hfstage predict``: images with runs, stages or ``hf://`` references (k-fold runs average their folds, ``tta``
    views) into the CSV ``out``; or, with ``stack=DIR`` and ``data=DIR``, a fitted stack on ``split`` (the CSV is
    written when ``out`` is given). Returns the summary the command prints."""
    if stack is None and images is None and len(runs) == 1 and data is not None:
        stack, runs = runs[0], ()  # an auto or stack folder given as the one positional
    if stack is not None:
        from hfstage.checkpoint import atomic_write_text

        if runs or images or data is None:
            raise ConfigError("predict: with stack=DIR give data=DIR (and no runs or images)")
        summary, table = predict_answer(stack, data, split)
        if out is not None:
            atomic_write_text(out, table)
        return summary
    if not runs or images is None or out is None:
        raise ConfigError("predict: give runs, images=DIR and out=FILE.csv (or stack=DIR and data=DIR)")
    from hfstage.predict import predict_images

    return predict_images(list(runs), images, out, tta, proba, batch_size)


def predict_answer(folder: str | Path, data: str, split: str = "test") -> tuple[dict, str]:
    """(summary, predictions CSV) of a stack folder, or of an ``hfstage auto`` folder's answer (its stack, or its
    best model when that is the answer), on ``data``'s ``split``."""
    import tempfile

    from hfstage.automl import final_of
    from hfstage.stacking import is_stack, predict_with_stack

    final = final_of(folder)
    if final is None and not is_stack(folder):
        raise ConfigError(f"predict: {folder} is neither a stack folder (stack_meta.json) nor an hfstage auto folder "
                          "(auto.json); for runs give --images DIR --out FILE.csv")
    path = final["path"] if final else folder
    if is_stack(path):
        return predict_with_stack(path, data, split)
    with tempfile.TemporaryDirectory() as tmp:  # the answer is one model: its evaluation's predictions
        result = evaluate(path, data, split, save_predictions=True, out=tmp)
        table = (Path(tmp) / f"{split}_predictions.csv").read_text(encoding="utf-8")
    summary = {"samples": result.get("samples"), "data_file": result.get("data_file"), **result.get("metrics", {})}
    return summary, table


def push(run_dir: str | Path, repo_id: str, stage: str | None = "all", private: bool = False,
         revision: str | None = None, create_pr: bool = False, commit_message: str | None = None) -> dict:
    """``hfstage push``: a run (or some of its stages), or an ``hfstage auto`` folder's answer (its stack with the
    members it uses, or its one model, and its card) to ``repo_id``."""
    from hfstage.automl import final_of

    if final_of(run_dir) is not None:
        from hfstage.automl.publish import push_auto

        if stage not in (None, "all"):
            raise ConfigError(f"--stage {stage}: an hfstage auto folder pushes its answer whole; leave --stage out")
        return push_auto(run_dir, repo_id, private, revision, create_pr, commit_message)
    from hfstage.hub.push import push as push_run

    return push_run(run_dir, repo_id, stage, private, revision, create_pr, commit_message)


def evaluate(path: str | Path, data_dir: str | None = None, split: str = "test", save_predictions: bool = False,
             batch_size: int = 512, out: str | Path | None = None) -> dict:
    """``hfstage evaluate``: a run (its best stage), a stage, an ``hf://`` reference, a fitted stack (a folder
    written by ``hfstage stack`` or a stacking recipe) or an ``hfstage auto`` folder (its final answer); returns the ``eval/<split>.json`` record, whose
    ``metrics.accuracy`` is the test accuracy whatever was evaluated."""
    from hfstage.automl import final_of
    from hfstage.evaluation import evaluate_checkpoint
    from hfstage.stacking import evaluate_stack, is_stack

    final = final_of(path)  # an hfstage auto folder: its answer
    if final is not None:
        path = final["path"]
    if is_stack(path):
        return evaluate_stack(path, data_dir, split, save_predictions, None if out is None else str(out))
    return evaluate_checkpoint(path, data_dir, split, save_predictions, batch_size, None if out is None else str(out))
