"""Many runs of one recipe: one per seed (``seeds: [...]``) and one per fold (``folds: K``).

Layouts (each ``fold_<k>``/``seed_<s>`` folder is a complete run)::

    <output_dir>/seed_<s>/      one run per seed, then a table of each seed's best stage and mean +- std
    <output_dir>/fold_<k>/      a run whose eval split is fold k's held-out part of the training split
    <output_dir>/oof.npy        out-of-fold probabilities of every training sample (N,) or (N, C)
    <output_dir>/oof_ids.npy    the samples' ids (file names for images, indices for .npz), same order
    <output_dir>/oof_labels.npy their labels
    <output_dir>/test_probs.npy mean of the folds' probabilities on the test split (+ test_ids.npy)
    <output_dir>/cv.json        per-fold metrics of each fold's best stage, CV mean +- std, OOF metrics

The out-of-fold files are what ``hfstage stack`` uses as meta-features: every sample is predicted by a
model that never trained on it. ``fold: K`` trains one fold only (to spread folds over machines); a later
run without ``fold`` trains what is missing and writes the out-of-fold files.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path
from typing import Sequence

import numpy as np
from accelerate import Accelerator

from hfstage.callbacks import StageCallback
from hfstage.checkpoint import atomic_save_npy, atomic_write_json
from hfstage.config import RunConfig
from hfstage.curriculum import run
from hfstage.devices import cpu_only, distributed_state
from hfstage.errors import ConfigError
from hfstage.executors import build_executor
from hfstage.evaluation import predict
from hfstage.folds import FoldSubset, fold_indices, labels_of, sample_ids
from hfstage.reporting import format_number, format_table
from hfstage.resolve import resolve_checkpoint
from hfstage.run_dir import CV_JSON, RunDir
from hfstage.tasks import TASKS


def run_seeds(cfg: RunConfig, config_file: str | None = None, callbacks: Sequence[StageCallback] = (),
              travelling: Sequence[StageCallback] = ()) -> list:
    """One run per seed of ``cfg.seeds`` in ``<output_dir>/seed_<s>`` (or the single run when there are none);
    each is a k-fold run when ``cfg.folds`` is set. The runs are units trained by ``cfg.executor``
    (``hfstage.executors``) and then joined here. Returns each run's RunRecord (k-fold: its CV summary).
    ``travelling`` callbacks go with every unit, wherever the executor trains it (picklable, and needing nothing of
    this process, such as a deadline on the wall clock); ``callbacks`` stay here (a local executor only)."""
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"seeds: {cfg.seeds} repeats a seed")
    if cfg.fold is not None:  # one fold of a k-fold run (the folds spread over machines by hand)
        return [run(fold_config(cfg, cfg.fold), config_file, [*callbacks, *travelling])]
    if not cfg.folds and not cfg.seeds:  # one run: nothing to fan out or join
        return [run(cfg, config_file, [*callbacks, *travelling])]
    units, per_seed = leaf_units(cfg, config_file)
    units = [dataclasses.replace(u, callbacks=(*u.callbacks, *travelling)) for u in units]
    build_executor(cfg.executor).run(units, callbacks)
    finals = join_units(per_seed)
    if cfg.seeds and distributed_state().is_main_process:
        print(format_seed_table(cfg, finals), flush=True)
    return finals


def seed_config(cfg: RunConfig, seed: int) -> RunConfig:
    return dataclasses.replace(cfg, seed=seed, seeds=[], output_dir=str(Path(cfg.output_dir) / f"seed_{seed}"),
                               hub_repo_id=f"{cfg.hub_repo_id}-seed-{seed}" if cfg.hub_repo_id else None,
                               stages=[dataclasses.replace(s) for s in cfg.stages])


def leaf_units(cfg: RunConfig, config_file: str | None = None, prefix: str = "") -> tuple[list, list[RunConfig]]:
    """(the runs a recipe trains -- each seed, each fold of each seed -- as executor units, the per-seed configs
    whose folds are joined afterwards); the executor settings stripped (``executors.as_unit``)."""
    from hfstage.executors import Unit, as_unit

    cfg = as_unit(cfg)
    per_seed = [seed_config(cfg, s) for s in cfg.seeds] if cfg.seeds else [cfg]
    units = []
    for one in per_seed:
        parts = [p for p in (prefix, f"seed_{one.seed}" if cfg.seeds else "") if p]
        if one.folds:
            units += [Unit("/".join([*parts, f"fold_{k}"]), fold_config(one, k), config_file) for k in range(one.folds)]
        else:
            units.append(Unit("/".join(parts) or "run", one, config_file))
    return units, per_seed


def join_units(per_seed: list[RunConfig]) -> list:
    """After every unit finished: the out-of-fold files of each k-fold seed (cv.json), and each seed's record."""
    finals = []
    for one in per_seed:
        if one.folds:
            summary = write_out_of_fold(one)
            if distributed_state().is_main_process:
                print(format_cv(summary), flush=True)
            finals.append(summary)
        else:
            finals.append(RunDir(one.output_dir).read())
    return finals


def format_seed_table(cfg: RunConfig, finals: list) -> str:
    """Each seed's best stage and its metrics, then mean +- std."""
    key = cfg.metric_for_best_model
    if cfg.folds:  # each seed is a k-fold run: its out-of-fold accuracy and CV means
        rows = [("seed", "oof_accuracy", f"{key} (CV mean)", "test_accuracy (CV mean)")]
        for seed, final in zip(cfg.seeds, finals):
            rows.append((str(seed), format_number(final["oof_accuracy"]), format_number(final.get(f"{key}_mean")),
                         format_number(final.get("test_accuracy_mean"))))
        return format_table(rows)
    rows = [("seed", "best_stage", key, "test_accuracy")]
    values: dict[str, list[float]] = {key: [], "test_accuracy": []}
    for final in finals:
        best = RunDir(final.config["output_dir"]).best(final)
        metric = best.metric(key) if best else None
        test = best.metric("test_accuracy") if best else None
        for name, v in ((key, metric), ("test_accuracy", test)):
            if isinstance(v, (int, float)):
                values[name].append(v)
        rows.append((str(final.config["seed"]), final.best_stage_dir or "-", format_number(metric), format_number(test)))
    spread = [f"{statistics.mean(v):.4f} +- {statistics.stdev(v) if len(v) > 1 else 0.0:.4f}" if v else "-"
              for v in values.values()]
    rows.append(("mean +- std", "", *spread))
    return format_table(rows)


def fold_config(cfg: RunConfig, k: int) -> RunConfig:
    out = Path(cfg.output_dir) / f"fold_{k}"
    return dataclasses.replace(cfg, fold=k, output_dir=str(out),
                               hub_repo_id=f"{cfg.hub_repo_id}-fold-{k}" if cfg.hub_repo_id else None,
                               stages=[dataclasses.replace(s) for s in cfg.stages])


def write_out_of_fold(cfg: RunConfig) -> dict:
    """Predict each fold's held-out part with its best stage; write oof.npy, test_probs.npy and cv.json."""
    task = TASKS.get(cfg.task, "task")()
    splits = task.load_splits(cfg.data, model=cfg.model)
    y = labels_of(splits.train)
    accelerator = Accelerator(cpu=cpu_only())
    oof, test_sum, per_fold = None, None, []
    key = cfg.metric_for_best_model
    for k, (_, held) in enumerate(fold_indices(y, cfg.folds, cfg.seed)):
        checkpoint = resolve_checkpoint(Path(cfg.output_dir) / f"fold_{k}")
        logits, _ = predict(accelerator, checkpoint, task, FoldSubset(splits.train, held), cfg.stages[-1].eval_batch_size)
        _, probs = task.decide(logits.numpy())
        if oof is None:
            oof = np.zeros((len(y),) + probs.shape[1:], dtype=np.float32)
        oof[held] = probs
        if splits.test is not None:
            logits, _ = predict(accelerator, checkpoint, task, splits.test, cfg.stages[-1].eval_batch_size)
            probs = task.decide(logits.numpy())[1]
            test_sum = probs if test_sum is None else test_sum + probs
        record = checkpoint.stage_record
        per_fold.append({"fold": k, "best_stage_dir": checkpoint.stage_dir.name, "held_out": int(len(held)),
                         key: record.metrics.get(key), "eval_accuracy": record.metrics.get("eval_accuracy"),
                         "test_accuracy": record.test_metrics.get("test_accuracy")})
    preds = oof.argmax(axis=1) if oof.ndim == 2 else (oof > 0.5).astype(np.int64)
    summary = {"folds": cfg.folds, "seed": cfg.seed, "metric": key, "per_fold": per_fold,
               "oof_accuracy": float((preds == y).mean()), "samples": int(len(y))}
    for name in dict.fromkeys([key, "eval_accuracy", "test_accuracy"]):
        values = [f[name] for f in per_fold if isinstance(f.get(name), (int, float))]
        if values:
            summary[f"{name}_mean"] = statistics.mean(values)
            summary[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    if test_sum is not None:
        test_probs = (test_sum / cfg.folds).astype(np.float32)
        test_y = labels_of(splits.test)
        test_pred = test_probs.argmax(axis=1) if test_probs.ndim == 2 else (test_probs > 0.5).astype(np.int64)
        summary["test_accuracy_fold_mean_ensemble"] = float((test_pred == test_y).mean())
    if distributed_state().is_main_process:
        out = Path(cfg.output_dir)
        atomic_save_npy(out / "oof.npy", oof)
        atomic_save_npy(out / "oof_ids.npy", sample_ids(splits.train))
        atomic_save_npy(out / "oof_labels.npy", y)
        if test_sum is not None:
            atomic_save_npy(out / "test_probs.npy", test_probs)
            atomic_save_npy(out / "test_ids.npy", sample_ids(splits.test))
        atomic_write_json(out / CV_JSON, {**summary, "config": cfg.to_dict()})
    accelerator.wait_for_everyone()
    return summary


def format_cv(summary: dict) -> str:
    key = summary["metric"]
    rows = [("fold", "best_stage", key, "test_accuracy")]
    for f in summary["per_fold"]:
        rows.append((str(f["fold"]), f["best_stage_dir"], format_number(f.get(key)), format_number(f.get("test_accuracy"))))
    rows.append(("mean +- std", "",
                 *(f"{summary[f'{n}_mean']:.4f} +- {summary[f'{n}_std']:.4f}" if f"{n}_mean" in summary else "-"
                   for n in (key, "test_accuracy"))))
    lines = [format_table(rows), f"out-of-fold accuracy {summary['oof_accuracy']:.4f} on {summary['samples']} samples"]
    if "test_accuracy_fold_mean_ensemble" in summary:
        lines.append(f"test accuracy of the folds' mean probabilities {summary['test_accuracy_fold_mean_ensemble']:.4f}")
    return "\n".join(lines)
