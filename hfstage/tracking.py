"""Trackers: a whole curriculum is one tracker run, on one global step.

The Trainer's own integrations start a tracker run per ``train()`` call, i.e. one per stage, each with
its step count from 0. hfstage gives the Trainer ``report_to="none"`` and logs itself: one run per
curriculum (named after the run folder, resumed with it: the tracker's run id is kept in ``run.json``),
every Trainer log event at ``global step = steps of the earlier stages + the stage's own step``, each
stage's boundary, hyperparameters, keep decision and test metrics, and the resolved config once.

Every tracker is optional but TensorBoard (``report_to``, checked when the config loads). Only the main
process logs.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from hfstage.callbacks import StageCallback
from hfstage.reporting import flatten

logger = logging.getLogger("hfstage")

# the Trainer's end-of-train summary entry: one number per stage, not a curve
TRAINER_SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss")


def metric_name(key: str) -> str:
    """The Trainer's log keys as tracker names: ``loss`` -> ``train/loss``, ``eval_accuracy`` -> ``eval/accuracy``."""
    for prefix in ("eval_", "test_"):
        if key.startswith(prefix):
            return f"{prefix[:-1]}/{key[len(prefix):]}"
    return f"train/{key}"


def _scalars(logs: dict[str, Any]) -> dict[str, float]:
    return {metric_name(k): float(v) for k, v in logs.items()
            if k not in TRAINER_SUMMARY_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _flat(data: dict) -> dict[str, Any]:
    """A nested config as ``a.b.c`` keys, lists as JSON text (tracker parameters are scalars)."""
    return {k: json.dumps(v) if isinstance(v, list) else v for k, v in flatten(data).items()}


def run_name(output_dir: str | Path) -> str:
    """A tracker run's name: the run folder's name (``seed_1``/``fold_0``, a search's ``trial_3`` and ``base``, with
    their parent's)."""
    path = Path(output_dir).resolve()
    if path.name.startswith(("seed_", "fold_", "trial_")) or path.name == "base":
        return f"{path.parent.name}-{path.name}"
    return path.name


class Tracker:
    """One tracker run for the curriculum. ``start`` returns an id to resume with (kept in run.json)."""

    name = "tracker"

    def start(self, name: str, project: str, folder: Path, config: dict, resume_id: str | None) -> str | None:
        raise NotImplementedError

    def log(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_params(self, params: dict[str, Any]) -> None:
        """Stage hyperparameters (flat ``stages.<N>_<name>.<field>`` keys)."""

    def finish(self, status: str) -> None:
        """Close the tracker run; ``status`` is run.json's (finished, failed, interrupted)."""


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def start(self, name, project, folder, config, resume_id):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder / "logs"))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")

    def log(self, metrics, step):
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_params(self, params):
        self.writer.add_text("stages", "\n".join(f"    {k}: {v}" for k, v in params.items()))

    def finish(self, status):
        self.writer.close()


class MLflowTracker(Tracker):
    name = "mlflow"

    def start(self, name, project, folder, config, resume_id):
        import mlflow

        uri = os.environ.get("MLFLOW_TRACKING_URI") or Path("mlruns").resolve().as_uri()
        if uri.startswith("file:") or "://" not in uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # a local folder store, chosen on purpose
        self.mlflow = mlflow
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or project)
        run = None
        if resume_id:
            try:
                run = mlflow.start_run(run_id=resume_id)
            except Exception as exc:  # noqa: BLE001  (another store, or the run was deleted)
                logger.warning("mlflow: could not resume run %s (%s); starting a new one", resume_id, exc)
        if run is None:
            run = mlflow.start_run(run_name=name)
            mlflow.log_dict(config, "hfstage_config.json")
            mlflow.log_params(_flat({k: v for k, v in config.items() if k not in ("stages", "defaults")}))
        logger.info("mlflow: run %s (%s) in %s", name, run.info.run_id, uri)
        return run.info.run_id

    def log(self, metrics, step):
        self.mlflow.log_metrics(metrics, step=step)

    def log_params(self, params):
        try:
            self.mlflow.log_params(params)
        except Exception as exc:  # noqa: BLE001  a resumed stage logs its (unchanged) parameters again
            logger.debug("mlflow: %s", exc)

    def finish(self, status):
        self.mlflow.end_run({"finished": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED"))


class TrackioTracker(Tracker):
    name = "trackio"

    def start(self, name, project, folder, config, resume_id):
        import trackio

        self.trackio = trackio
        trackio.init(project=project, name=name, config=_flat(config), resume="allow", embed=False)
        logger.info("trackio: run %s in project %s", name, project)
        return name

    def log(self, metrics, step):
        self.trackio.log(metrics, step=step)

    def log_params(self, params):
        self.trackio.config.update(params)

    def finish(self, status):
        self.trackio.finish()


class WandbTracker(Tracker):
    name = "wandb"

    def start(self, name, project, folder, config, resume_id):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or project, name=name, id=resume_id,
                              resume="allow", config=config, dir=str(folder))
        return self.run.id

    def log(self, metrics, step):
        self.run.log(metrics, step=step)

    def log_params(self, params):
        self.run.config.update(params, allow_val_change=True)

    def finish(self, status):
        self.run.finish(exit_code=0 if status == "finished" else 1)


TRACKER_CLASSES = {cls.name: cls for cls in (TensorBoardTracker, MLflowTracker, TrackioTracker, WandbTracker)}


class CurriculumTracking(StageCallback):
    """The run's trackers, fed by the curriculum (stage boundaries, results) and the Trainer (``on_log``)."""

    def __init__(self, names: list[str], folder: Path, project: str, config: dict, resume_ids: dict[str, str]):
        self.trackers: list[Tracker] = []
        self.ids: dict[str, str] = {}
        self.offset = 0
        self.stage_index = 0
        name = run_name(folder)
        for tracker_name in names:
            if tracker_name == "none":
                continue
            tracker = TRACKER_CLASSES[tracker_name]()
            run_id = tracker.start(name, project, folder, config, resume_ids.get(tracker_name))
            if run_id:
                self.ids[tracker_name] = run_id
            self.trackers.append(tracker)

    def _each(self, method: str, *args) -> None:
        for tracker in self.trackers:
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # noqa: BLE001  a tracker's failure must not end the training
                logger.warning("%s: %s failed: %s", tracker.name, method, exc)

    def begin_stage(self, index: int, stage, offset: int) -> None:
        """Stage ``index`` starts at global step ``offset`` (the steps of every earlier stage)."""
        self.offset, self.stage_index = offset, index
        self._each("log", {"curriculum/stage": float(index), "stage/lr": float(stage.lr),
                           "stage/epochs": float(stage.epochs), "stage/batch_size": float(stage.batch_size)}, offset)
        label = f"stages.{index}_{stage.name}"
        params = {f"{label}.{k}": v for k, v in _flat({k: v for k, v in vars(stage).items()
                                                       if k not in ("name", "description")}).items()}
        self._each("log_params", params)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or any(k.startswith("test_") for k in logs):
            return  # test metrics are logged with the stage's results (end_stage)
        metrics = _scalars(logs)
        if metrics:
            self._each("log", metrics, self.offset + state.global_step)

    def end_stage(self, record) -> None:
        """A stage's results at its last global step: its keep decision and its test metrics."""
        step = self.offset + (record.global_steps or 0)
        results = {metric_name(k): float(v) for k, v in record.test_metrics.items()
                   if isinstance(v, (int, float)) and math.isfinite(v)}
        results["stage/kept"] = 1.0 if record.kept else 0.0
        self._each("log", results, step)

    def finish(self, status: str) -> None:
        self._each("finish", status)
        self.trackers = []
