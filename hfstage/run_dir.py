"""The run folder, with one owner: its layout, its typed records, and the decisions read from them.

Layout of a run (``output_dir``)::

    run.json                     RunRecord: status (running, finished, failed or interrupted, with the error and
                                 the stage), resolved config, world_size, stages, best_stage, tracker run ids
    stage_<N>_<name>/            a finished stage: model.safetensors, config.json, stage.json (StageRecord),
                                 and whatever the task saves with the model (the speech processor), eval/
    checkpoints/stage_<N>_<name>/  the Trainer checkpoints of the stage being trained (removed when it ends)
    training.log, logs/          the run's log; TensorBoard events (one timeline: global steps across stages)
    curves.png                   train/eval loss and the tracked metric over the global step, stages shaded
    .lock                        one run per folder at a time (checkpoint.RunLock)

A k-fold run is a folder of ``fold_<k>/`` runs plus ``cv.json`` and the out-of-fold arrays; a seeds run a
folder of ``seed_<s>/`` runs. Every other module asks this one (``RunDir``, ``RunRecord``, ``StageRecord``)
instead of reading the JSON itself; the files' keys are a contract and stay as they are.

Keeping: a stage is kept when it improves the tracked metric over the best kept stage by at least
``improvement_threshold`` (any negative threshold keeps every stage); the next stage starts from the
latest kept one, and the run's best stage is the best kept one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hfstage.checkpoint import (
    RUN_FORMAT,
    atomic_write_json,
    lock_holder_alive,
    publish_dir,
    read_json,
    read_run_record,
    remove_stale_tmp,
    staging_dir,
)
from hfstage.config import RunConfig, StageConfig, config_from_dict, stage_number
from hfstage.errors import CheckpointError, ConfigError
from hfstage.reporting import format_number, format_table, versions

logger = logging.getLogger("hfstage")

RUN_JSON = "run.json"
STAGE_JSON = "stage.json"
TRAINING_LOG = "training.log"
CURVES_PNG = "curves.png"
CHECKPOINTS = "checkpoints"
CV_JSON = "cv.json"
STAGE_FILES = ("config.json", "model.safetensors", "stage.json")
STAGE_DIR_RE = re.compile(r"^stage_(\d+)_([A-Za-z0-9][A-Za-z0-9_-]*)$")
# Fields that may differ on resume: how a run is logged, where it lives, and quick_test, whose
# effects are already written into the stages and the data fields that are compared (and where it trains:
# the executor, and its keys in runs saved before it was a mapping).
COSMETIC_FIELDS = ("report_to", "project", "license", "logging_steps", "output_dir", "quick_test", "quick_test_samples",
                   "push_to_hub", "hub_repo_id", "hub_private", "executor", "search", "test_every_stage", "ray_address",
                   "resources")


def stage_dirname(index: int, name: str) -> str:
    return f"stage_{index}_{name}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


class _Record:
    """A JSON record as a dataclass: known keys as fields (in file order), unknown ones kept in ``extra``."""

    OPTIONAL: tuple[str, ...] = ()  # keys written only when set

    @classmethod
    def from_dict(cls, data: dict, where: str):
        if not isinstance(data, dict):
            raise CheckpointError(f"{where}: not a record (expected a JSON object)")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data]
        if missing:
            raise CheckpointError(f"{where}: missing '{missing[0]}'; not an hfstage record")
        return cls(**{k: v for k, v in data.items() if k in names},
                   extra={k: v for k, v in data.items() if k not in names})

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (f.name in self.OPTIONAL and value is None):
                continue
            out[f.name] = value
        return {**out, **self.extra}


@dataclass
class StageRecord(_Record):
    """``stage.json``: what a finished stage trained on, with what, and what it reached."""

    stage_index: int
    stage_name: str
    stage_description: str = ""
    task: str | None = None
    data: dict | None = None
    train_data_sha256: str | None = None
    stage_config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    test_metrics: dict = field(default_factory=dict)
    training_time_s: float = 0.0
    train_samples_per_second: float | None = None
    global_steps: int | None = None
    kept: bool = True
    improvement: float | None = None
    improvement_threshold: float | None = None
    started_from: str | None = None
    pseudo_labels: dict | None = None
    skipped_steps: int | None = None
    frozen_parameters: int = 0
    total_parameters: int | None = None
    world_size: int | None = None
    finished_at: str | None = None
    log_history: list | None = None  # the Trainer's log events of the stage (its own steps), for curves.png
    extra: dict = field(default_factory=dict)

    OPTIONAL = ("pseudo_labels", "skipped_steps", "log_history")

    @property
    def dir(self) -> str:
        return stage_dirname(self.stage_index, self.stage_name)

    def metric(self, name: str):
        """A metric by name: ``eval_*`` from the stage's metrics, ``test_*`` from its test metrics."""
        return self.metrics.get(name, self.test_metrics.get(name))


@dataclass
class StageEntry(_Record):
    """One stage in ``run.json``: finished (with its headline numbers) or pending."""

    stage_index: int
    stage_name: str
    dir: str
    status: str = "pending"
    kept: bool | None = None
    metrics: dict | None = None
    training_time_s: float | None = None
    extra: dict = field(default_factory=dict)

    OPTIONAL = ("kept", "metrics", "training_time_s")

    @property
    def finished(self) -> bool:
        return self.status == "finished"


@dataclass
class RunRecord(_Record):
    """``run.json``: the run's status, its resolved config, its stages and its best stage."""

    config: dict
    format_version: int = RUN_FORMAT
    status: str = "running"
    config_file: str | None = None
    versions: dict = field(default_factory=dict)
    world_size: int | None = None
    metric_for_best_model: str = "eval_loss"
    stages: list[StageEntry] = field(default_factory=list)
    best_stage: int | None = None
    best_stage_dir: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    error: str | None = None
    error_stage: str | None = None  # the stage folder a failed or interrupted run was in
    trackers: dict | None = None  # tracker -> its run id, so a resumed run logs to the same tracker run
    pulled_from: dict | None = None
    extra: dict = field(default_factory=dict)

    OPTIONAL = ("error", "error_stage", "trackers", "pulled_from")
    ORDER = ("format_version", "status", "config_file", "config", "versions", "world_size", "metric_for_best_model",
             "stages", "best_stage", "best_stage_dir", "created_at", "updated_at", "error", "error_stage", "trackers",
             "pulled_from")

    @classmethod
    def from_dict(cls, data: dict, where: str) -> RunRecord:
        record = super().from_dict(data, where)
        record.stages = [s if isinstance(s, StageEntry) else StageEntry.from_dict(s, f"{where}: stages")
                         for s in record.stages]
        return record

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.ORDER if not (k in self.OPTIONAL and getattr(self, k) is None)}
        out["stages"] = [s.to_dict() for s in self.stages]
        return {**out, **self.extra}

    @classmethod
    def build(cls, cfg: RunConfig, config_file: str | None, world_size: int, records: list[StageRecord], status: str,
              created_at: str | None = None, error: str | None = None, error_stage: str | None = None,
              trackers: dict | None = None) -> RunRecord:
        """The run.json of ``cfg`` with ``records`` finished."""
        best = best_kept(cfg, records)
        finished = {r.stage_index: r for r in records}
        stages = []
        for index, stage in enumerate(cfg.stages, 1):
            r = finished.get(index)
            entry = StageEntry(index, stage.name, stage_dirname(index, stage.name), "finished" if r else "pending")
            if r:
                entry.kept, entry.metrics, entry.training_time_s = r.kept, r.metrics, r.training_time_s
            stages.append(entry)
        return cls(config=cfg.to_dict(), status=status, config_file=config_file, versions=versions(),
                   world_size=world_size, metric_for_best_model=cfg.metric_for_best_model, stages=stages,
                   best_stage=best.stage_index if best else None, best_stage_dir=best.dir if best else None,
                   created_at=created_at or _now(), updated_at=_now(), error=error, error_stage=error_stage,
                   trackers=trackers or None)

    def finished(self) -> list[StageEntry]:
        return [s for s in self.stages if s.finished]

    def best_of(self, records: list[StageRecord]) -> StageRecord | None:
        """The run's best stage among ``records`` (its stage.json records), or None."""
        return next((r for r in records if r.stage_index == self.best_stage), None)

    def select(self, which: str | None, where: str) -> list[StageEntry]:
        """Finished stages: ``all`` (or None), ``best``, a stage number, a stage name or a stage folder name."""
        stages = self.finished()
        if which in (None, "all"):
            return stages
        if which == "best":
            chosen = [s for s in stages if s.stage_index == self.best_stage]
        else:
            number = stage_number([s.stage_name for s in self.stages], which)
            chosen = [s for s in stages if s.stage_index == number or s.dir == which]
        if not chosen:
            names = ", ".join(s.dir for s in stages) or "none"
            raise CheckpointError(f"{where}: --stage {which!r} is not a finished stage (finished: {names})")
        return chosen


# --------------------------------------------------------------------------------------------------
# Keeping: which stage is kept, which is best, which the next one starts from


def better(cfg: RunConfig, value: float, reference: float) -> float:
    """How much ``value`` improves on ``reference`` for the tracked metric (positive = better)."""
    return value - reference if cfg.greater_is_better else reference - value


def best_kept(cfg: RunConfig, records: list[StageRecord]) -> StageRecord | None:
    key = cfg.metric_for_best_model
    kept = [r for r in records if r.kept and key in r.metrics]
    if not kept:
        return None
    sign = 1 if cfg.greater_is_better else -1
    return max(kept, key=lambda r: sign * r.metrics[key])


def latest_kept(records: list[StageRecord]) -> StageRecord | None:
    """The stage the next one starts from."""
    kept = [r for r in records if r.kept]
    return kept[-1] if kept else None


def decide_kept(cfg: RunConfig, records: list[StageRecord], metrics: dict) -> tuple[bool, float | None]:
    """(kept, improvement over the best kept stage so far)."""
    key = cfg.metric_for_best_model
    if key not in metrics:
        raise ConfigError(
            f"metric_for_best_model: {key!r} is not among the stage metrics ({', '.join(sorted(metrics))})"
        )
    reference = best_kept(cfg, records)
    if reference is None:
        return True, None
    gain = better(cfg, metrics[key], reference.metrics[key])
    return (cfg.improvement_threshold < 0 or gain >= cfg.improvement_threshold), gain


# --------------------------------------------------------------------------------------------------
# The folder


class RunDir:
    """A run folder: read and write its records, find its stages, decide what a rerun resumes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def run_json(self) -> Path:
        return self.path / RUN_JSON

    @property
    def training_log(self) -> Path:
        return self.path / TRAINING_LOG

    def is_run(self) -> bool:
        return self.run_json.is_file()

    def status(self, run: RunRecord | None = None) -> str:
        """run.json's status, except that a ``running`` run whose process is gone (killed with SIGKILL, the machine
        rebooted: nothing could write) is ``interrupted``."""
        run = run or self.read()
        if run.status == "running" and not lock_holder_alive(self.path):
            return "interrupted"
        return run.status

    def stage_path(self, stage: StageRecord | StageEntry | str) -> Path:
        return self.path / (stage if isinstance(stage, str) else stage.dir)

    # -- records

    def read(self) -> RunRecord:
        """``run.json``; a CheckpointError when it is missing, unreadable or written by a newer hfstage."""
        return RunRecord.from_dict(read_run_record(self.run_json), str(self.run_json))

    def config(self) -> RunConfig:
        """The run's resolved config (upgraded when an older hfstage saved it)."""
        return config_from_dict(self.read().config, str(self.run_json))

    def write(self, record: RunRecord) -> None:
        atomic_write_json(self.run_json, record.to_dict())

    def read_stage(self, stage: StageEntry | str) -> StageRecord:
        path = self.stage_path(stage) / STAGE_JSON
        try:
            data = read_json(path)
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: unreadable stage record ({exc}); delete that stage folder to retrain it")
        return StageRecord.from_dict(data, str(path))

    def records(self, run: RunRecord | None = None) -> list[StageRecord]:
        """The stage.json of every finished stage run.json lists, in order."""
        run = run or self.read()
        return [self.read_stage(s) for s in run.finished() if (self.stage_path(s) / STAGE_JSON).is_file()]

    def best(self, run: RunRecord | None = None) -> StageRecord | None:
        """The record of the run's best stage (None while there is none)."""
        run = run or self.read()
        return run.best_of(self.records(run))

    def check_stage_files(self, entries: list[StageEntry]) -> None:
        for s in entries:
            for name in STAGE_FILES:
                if not (self.stage_path(s) / name).is_file():
                    raise CheckpointError(f"{self.stage_path(s)}: missing {name}; the run says this stage finished")

    def load_cv(self) -> dict | None:
        """``cv.json`` of a k-fold run folder, or None when it is not one."""
        return read_json(self.path / CV_JSON) if (self.path / CV_JSON).is_file() else None

    def fold_dirs(self) -> list[Path]:
        return sorted(self.path.glob("fold_*"), key=lambda p: int(p.name.split("_")[1]))

    # -- training: resume and publish

    def finished_on_disk(self, cfg: RunConfig) -> list[StageRecord]:
        """Records of ``cfg``'s stages already finished here, in order, stopping at the first gap."""
        records = []
        for index, stage in enumerate(cfg.stages, 1):
            dirname = stage_dirname(index, stage.name)
            if not (self.stage_path(dirname) / STAGE_JSON).is_file():
                break
            records.append(self.read_stage(dirname))
        return records

    def check_resumable(self, cfg: RunConfig) -> RunRecord | None:
        """Refuse a folder that holds a different run; return its run.json when it is this run (None: a new run)."""
        if not self.run_json.is_file():
            if self.path.is_dir() and any(p.name.startswith("stage_") for p in self.path.iterdir()):
                raise ConfigError(f"{self.path}: holds stage folders but no {RUN_JSON}; it is not an hfstage run this "
                                  "command can resume")
            return None
        try:
            saved = self.read()
        except CheckpointError as exc:
            raise ConfigError(f"{exc}; choose another output_dir") from None
        diffs = self.differences(saved, cfg, len(self.finished_on_disk(cfg)))
        if diffs:
            raise ConfigError(
                f"{self.run_json}: output_dir holds a different run ({'; '.join(diffs[:5])}); "
                "choose another output_dir, or delete this one to start over"
            )
        return saved

    def differences(self, saved: RunRecord, cfg: RunConfig, stages: int | None = None) -> list[str]:
        """How ``cfg`` differs from the run saved here (see ``config_differences``)."""
        return config_differences(saved.config, cfg, str(self.run_json), stages)

    def remove_stale_tmp(self) -> None:
        remove_stale_tmp(self.path)

    def work_dir(self, stage_dir: str, stage: StageConfig, main: bool = True) -> Path:
        """The stage's Trainer checkpoints; (main process) discarded when the stage's config changed since."""
        work = self.path / CHECKPOINTS / stage_dir
        if not main:
            return work
        marker = work / "stage_config.json"
        wanted = dataclasses.asdict(stage)
        if work.is_dir():
            try:
                same = read_json(marker) == json.loads(json.dumps(wanted))
            except (OSError, json.JSONDecodeError):
                same = False
            if not same:
                logger.warning("%s: discarding checkpoints made with a different stage config", work)
                shutil.rmtree(work, ignore_errors=True)
        if not work.is_dir():
            atomic_write_json(marker, wanted)
        return work

    def publish_stage(self, record: StageRecord, fill: Callable[[Path], None]) -> Path:
        """Write a finished stage atomically: ``fill(folder)`` writes the model files into a staging folder, then
        stage.json is added and the folder renamed into place. Raises OSError (nothing published) on failure."""
        final = self.stage_path(record)
        staged = None
        try:
            staged = staging_dir(final)
            fill(staged)
            atomic_write_json(staged / STAGE_JSON, record.to_dict())
            publish_dir(staged, final)
        except OSError:
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)
            raise
        return final


def last_complete_checkpoint(work: Path) -> str | None:
    """The newest Trainer checkpoint that was written completely (a kill or a full disk can leave a newer,
    partial ``checkpoint-N``: it is removed, and training resumes from the one before)."""
    if not work.is_dir():
        return None
    for folder in sorted((p for p in work.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                         key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        has_weights = any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin"))
        if has_weights and (folder / "trainer_state.json").is_file() and (folder / "optimizer.pt").is_file():
            return str(folder)
        logger.warning("%s is incomplete (killed or out of space while saving); removing it", folder)
        shutil.rmtree(folder, ignore_errors=True)
    return None


def config_differences(saved: dict[str, Any], cfg: RunConfig, where: str, stages: int | None = None,
                       ignore: tuple[str, ...] = ()) -> list[str]:
    """How ``cfg`` differs from a saved config (``where`` names its file), over its first ``stages`` stages (all:
    None), cosmetic fields and the top-level fields in ``ignore`` aside; fields newer than the saved config read as
    their defaults."""
    stages = len(cfg.stages) if stages is None else stages
    new = json.loads(json.dumps(cfg.to_dict()))
    return _diff(_comparable(_with_current_defaults(saved, where), stages, ignore), _comparable(new, stages, ignore))


def _with_current_defaults(saved: dict[str, Any], where: str) -> dict[str, Any]:
    """A run.json config with the fields that newer hfstage versions added filled with their defaults.

    A run written before a field existed behaved as that field's default, so resuming it with this
    version must not read the missing field as a different run. A field this version no longer knows
    leaves the config as written (the comparison then names it).
    """
    try:
        filled = json.loads(json.dumps(config_from_dict(saved, where).to_dict()))
    except ConfigError:
        return saved
    filled["quick_test"] = saved.get("quick_test", filled.get("quick_test"))  # config_from_dict resets it
    return filled


def _comparable(config: dict[str, Any], finished: int, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    out = {k: v for k, v in config.items() if k not in (*COSMETIC_FIELDS, *ignore, "stages")}
    out["stages"] = config.get("stages", [])[:finished]
    return out


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b), 1):
            out += _diff(x, y, f"{prefix}.{i}")
        return out
    return [] if a == b else [f"{prefix}: {a!r} -> {b!r}"]


def headline_metrics(records: list[StageRecord], names: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The task's headline metrics on eval and test: ``names`` (its ``Task.headline_metrics``) when the caller knows
    the task; else read from the records: accuracy, or PER and error F1 for speech."""
    if names:
        return tuple(f"{split}_{n}" for split in ("eval", "test") for n in names)
    if any("eval_per" in r.metrics for r in records):
        return ("eval_per", "eval_prompt_echo_per", "eval_error_f1", "test_per", "test_prompt_echo_per", "test_error_f1")
    return ("eval_accuracy", "test_accuracy")


def format_stage_table(records: list[StageRecord], best_stage: int | None, names: tuple[str, ...] | None = None) -> str:
    """The stages table: stage, kept, eval loss, the task's headline metrics (``names``, or read from the records:
    accuracy, or PER and error F1 for speech) on eval and test, time."""
    columns = headline_metrics(records, names)
    header = ("stage", "kept", "eval_loss", *columns, "time_s", "started_from")
    rows = [header]
    for r in records:
        name = (f"{r.stage_index} {r.stage_name}" + (" *" if r.stage_index == best_stage else "")
                + (" +" if r.extra.get("trained_on_eval") else ""))
        rows.append((
            name,
            "yes" if r.kept else "no",
            format_number(r.metrics.get("eval_loss")),
            *(format_number(r.metric(key)) for key in columns),
            format_number(r.training_time_s, 1),
            r.started_from or "init",
        ))
    lines = format_table(rows).splitlines()
    if best_stage is not None:
        lines.append("* best stage")
    if any(r.extra.get("trained_on_eval") for r in records):
        lines.append("+ trained on train + eval (train_on_eval): its eval metrics are in-sample")
    return "\n".join(lines)
