"""The Optuna side of a search (the only module of hfstage that imports Optuna): the study, its sampler and
pruner, and the Trainer callback through which a trial reports its tracked metric at every evaluation."""

from __future__ import annotations

import logging
import math
from typing import Any

from hfstage.callbacks import StageCallback
from hfstage.errors import ConfigError, HfstageError

logger = logging.getLogger("hfstage")


def optuna():
    try:
        import optuna as module
    except ImportError:
        raise ConfigError("hfstage search needs Optuna: pip install 'hfstage[search]'") from None
    module.logging.set_verbosity(module.logging.WARNING)
    return module


def make_pruner(name: str):
    """``median``: stop a trial whose metric at an evaluation is worse than the median of the earlier trials' at the
    same evaluation (once 2 trials finished); ``hyperband``: Optuna's Hyperband over evaluations; ``none``."""
    op = optuna()
    if name == "median":
        return op.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return op.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    return op.pruners.NopPruner()


JOURNAL = "journal:"


def storage_of(url: str):
    """An Optuna storage from its URL: an RDB URL (``sqlite:///...``, ``postgresql://...``) as Optuna reads it, or
    ``journal:PATH``, a journal file (append-only, for many machines that share a filesystem without a database)."""
    op = optuna()
    if url.startswith(JOURNAL):
        path = url[len(JOURNAL):].removeprefix("//")
        if not path:
            raise ConfigError(f"--storage {url}: name the journal file (journal:/shared/search.log)")
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        return op.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    return url


def open_study(storage: str, name: str, direction: str, seed: int, pruner: str):
    """Create the study, or load it to continue (a rerun of the same search)."""
    op = optuna()
    backend = storage_of(storage)
    try:
        return op.create_study(storage=backend, study_name=name, direction=direction, load_if_exists=True,
                               sampler=op.samplers.TPESampler(seed=seed), pruner=make_pruner(pruner))
    except Exception as exc:  # noqa: BLE001  SQLAlchemy / journal errors: a bad URL or an unreachable database
        raise ConfigError(f"--storage: cannot open the study at {storage}: {type(exc).__name__}: {exc}") from None


def fresh_attrs(study, trial) -> dict[str, Any]:
    """A running trial's user attributes as stored now (its callback may run in another process)."""
    return study._storage.get_trial(trial._trial_id).user_attrs


def importances(study) -> dict[str, float]:
    """Optuna's parameter importances (fANOVA), most important first; empty when it cannot tell yet."""
    op = optuna()
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == op.trial.TrialState.COMPLETE]
    if len(complete) < 2 or len({repr(sorted(t.params.items())) for t in complete}) < 2:
        return {}
    try:
        return dict(op.importance.get_param_importances(study))
    except (RuntimeError, ValueError) as exc:
        logger.info("search: no parameter importances: %s", exc)
        return {}


def trial_states():
    return optuna().trial.TrialState


class Pruned(HfstageError):
    """A trial the pruner stopped: its later stages (``--through``) do not train."""


class PruningCallback(StageCallback):
    """Reports the tracked metric to the trial at every evaluation of the searched stages (step = the evaluation's
    number, counted over those stages) and stops the stage when the pruner says so (not at the trial's very last
    evaluation, which ends it anyway: its metric then stands as a complete trial's); the trial's user attribute
    ``pruned_at_step`` (the Trainer's global step, counted over the stages) records where. Picklable, so a Ray worker
    reports to the same study."""

    def __init__(self, storage: str, study_name: str, trial_id: int, metric: str, pruner: str, last_stage: int):
        self.storage, self.study_name, self.trial_id, self.metric = storage, study_name, trial_id, metric
        self.pruner = pruner  # the pruner is not stored with the study: each process that asks it makes its own
        self.last_stage = last_stage  # the trial's last stage: its final evaluation ends the trial anyway
        self.stage = 0
        self.evaluations = 0
        self.steps_before = 0  # global steps of the searched stages already finished
        self.pruned = False
        self._trial = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_trial": None}

    def trial(self):
        if self._trial is None:
            op = optuna()
            study = op.load_study(study_name=self.study_name, storage=storage_of(self.storage),
                                  pruner=make_pruner(self.pruner))
            self._trial = op.trial.Trial(study, self.trial_id)
        return self._trial

    def on_stage_begin(self, stage_index: int, stage, run_config, **kwargs):
        if self.pruned:
            raise Pruned(f"stage {stage_index} '{stage.name}' not trained: the search pruned this trial")
        self.stage = stage_index

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero or not metrics or self.metric not in metrics:
            return
        value = float(metrics[self.metric])
        self.evaluations += 1
        trial = self.trial()
        trial.report(value if math.isfinite(value) else float("nan"), step=self.evaluations)
        finishing = self.stage == self.last_stage and state.global_step >= state.max_steps  # nothing left to save
        if not self.pruned and not finishing and trial.should_prune():
            self.pruned = True
            step = self.steps_before + state.global_step
            trial.set_user_attr("pruned_at_step", step)
            logger.info("search: trial pruned at step %d (%s = %.6g)", step, self.metric, value)
            control.should_training_stop = True

    def on_stage_end(self, stage_index: int, stage, run_config, record, **kwargs):
        self.steps_before += record.global_steps or 0
