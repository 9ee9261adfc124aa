"""What a user names as a model -- a stage folder, a run folder (its best stage), a k-fold run (its folds'
best stages) or an ``hf://`` reference to a pushed run or stage -- resolved to saved stages.

The model type comes from the stage's ``config.json`` and the task and data from its ``stage.json`` /
``run.json`` (through ``run_dir``), never from a folder's name. This sits above both the run folder and the
Hub client: a Hub reference is downloaded into the Hub cache and then read like a local folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import AutoModel

from hfstage.config import DataConfig
from hfstage.errors import CheckpointError
from hfstage.hub.pull import resolve as resolve_reference
from hfstage.hub.refs import is_reference, parse_reference
from hfstage.models.base import is_native, load_saved_model
from hfstage.run_dir import CV_JSON, STAGE_FILES, RunDir, StageRecord


@dataclass
class Checkpoint:
    """A saved stage and what it was trained on."""

    stage_dir: Path
    task: str
    data: DataConfig
    stage_record: StageRecord
    reference: str | None = None  # hf://OWNER/NAME@<commit>/stage_<N>_<name> when it came from the Hub

    def load_model(self):
        """The stage's model; a Hub stage through ``from_pretrained(repo, subfolder=, revision=)`` and its cache."""
        if self.reference is None or is_native(self.stage_dir):  # (a Hub stage's files are in the Hub cache already)
            return load_stage_model(self.stage_dir)
        ref = parse_reference(self.reference)
        return AutoModel.from_pretrained(ref.repo_id, subfolder=ref.stage, revision=ref.revision)

    @property
    def eval_dir(self) -> Path:
        """``eval/`` beside a local stage; ``./eval/<owner>--<name>/<stage>`` for a Hub stage (never the cache)."""
        if self.reference is None:
            return self.stage_dir / "eval"
        ref = parse_reference(self.reference)
        return Path("eval") / ref.repo_id.replace("/", "--") / ref.stage


def load_stage_model(stage_dir: Path):
    """Rebuild a saved stage's model from its ``config.json`` (the model type comes from there)."""
    if not (Path(stage_dir) / "config.json").is_file():
        raise CheckpointError(f"{stage_dir}: no config.json; not a saved stage")
    return load_saved_model(stage_dir)


def resolve_checkpoint(path: str | Path) -> Checkpoint:
    """A stage folder, a run folder (meaning its best stage), or an ``hf://`` reference to either."""
    text = str(path)
    if is_reference(text):
        local, pinned = resolve_reference(text)
        checkpoint = resolve_checkpoint(local)
        if "/stage_" not in pinned.rsplit("@", 1)[-1]:
            pinned = f"{pinned}/{checkpoint.stage_dir.name}"
        checkpoint.reference = pinned
        return checkpoint
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    run_dir = None
    if RunDir(path).is_run():
        run_dir = RunDir(path)
        best = run_dir.read().best_stage_dir
        if not best:
            raise CheckpointError(f"{run_dir.run_json}: the run has no finished kept stage to evaluate (best_stage_dir)")
        path = path / best
    elif RunDir(path.parent).is_run():
        run_dir = RunDir(path.parent)
    for name in STAGE_FILES:
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: missing {name}; not a saved stage")
    record = RunDir(path.parent).read_stage(path.name)
    if run_dir is not None:
        cfg = run_dir.config()
        task, data = cfg.task, cfg.data
    elif record.task and record.data:
        task, data = record.task, DataConfig(**record.data)
    else:
        raise CheckpointError(f"{path / 'stage.json'}: records no task/data and there is no run.json beside it")
    return Checkpoint(stage_dir=path, task=task, data=data, stage_record=record)


def fold_checkpoints(reference: str) -> tuple[list[Checkpoint], dict] | None:
    """(each fold's best-stage Checkpoint, cv.json) for a finished k-fold run folder; None for anything else."""
    if is_reference(reference):
        return None
    folder = RunDir(reference)
    cv = folder.load_cv()
    if cv is None:
        if (folder.path / "fold_0").is_dir():
            raise CheckpointError(f"{reference}: a k-fold run without {CV_JSON}; rerun its config to finish every fold")
        return None
    folds = folder.fold_dirs()
    if len(folds) != cv["folds"]:
        raise CheckpointError(f"{reference}: {CV_JSON} says {cv['folds']} folds but {len(folds)} fold folders are here")
    return [resolve_checkpoint(f) for f in folds], cv
