"""The curriculum runner: one engine that trains any list of stages, in order, for every task.

Each stage gets a fresh ``StageTrainingArguments`` and ``StageTrainer``, starts from the weights of
the latest kept stage, and ends with its best-within-stage weights written atomically to
``<output_dir>/stage_<N>_<name>/`` (``model.safetensors``, ``config.json``, ``stage.json``). A stage is
kept when it improves the tracked metric over the best kept stage by at least
``improvement_threshold``, so with a threshold >= 0 the latest kept stage is also the best one; a
negative threshold keeps every stage and each continues from the one before. Rerunning the same
command resumes: finished stages are skipped and an interrupted stage continues from its last Trainer
checkpoint under ``<output_dir>/checkpoints/``. What is kept, resumed and recorded is the run folder's
business (``run_dir.py``); this module only runs the stages.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Sequence

from transformers import set_seed

from hfstage.callbacks import StageCallback
from hfstage.checkpoint import RunLock
from hfstage.config import RunConfig
from hfstage.curves import draw_curves
from hfstage.devices import ddp_timeout, distributed_state
from hfstage.errors import (CheckpointError, ConfigError, HfstageError, Interrupted, PeerLost, StageError, about_recipe,
                            first_line)
from hfstage.folds import fold_splits
from hfstage.hub import HubPushCallback, require_token
from hfstage.log import log_to_file, main_process_only, setup_console
from hfstage.models import build_model
from hfstage.preflight import check_stages
from hfstage.run_dir import CURVES_PNG, RunDir, RunRecord, StageRecord, format_stage_table, stage_dirname
from hfstage.stage import train_stage
from hfstage.tasks import TASKS, Splits
from hfstage.tracking import CurriculumTracking

logger = logging.getLogger("hfstage")


def run(cfg: RunConfig, config_file: str | None = None, callbacks: Sequence[StageCallback] = (),
        splits: Splits | None = None, task=None) -> RunRecord:
    """Run (or resume) the whole curriculum; returns the final run.json record. ``splits`` (and the ``task`` that
    read them): the data, when it does not come from ``cfg.data`` (``hfstage.train`` with datasets passed in)."""
    state = distributed_state(ddp_timeout(cfg.stages))
    main = state.is_main_process
    main_process_only(main)
    folder = RunDir(cfg.output_dir)
    with about_recipe(config_file):  # what is checked before anything is written names the recipe
        task = task or TASKS.get(cfg.task, "task")()
        if splits is None:
            splits = task.load_splits(cfg.data, model=cfg.model)
        if cfg.fold is not None:
            splits = fold_splits(splits, cfg)
        set_seed(cfg.seed)
        check_stages(cfg, task, build_model(cfg.model, **task.model_args(splits)))
    saved = folder.check_resumable(cfg)
    records = folder.finished_on_disk(cfg)
    created_at = saved.created_at if saved else None
    if cfg.push_to_hub:  # every process checks, so a refusal stops all of them before training
        require_token(cfg.hub_repo_id, "push_to_hub", cfg.hub_private)
    state.wait_for_everyone()  # every process checked the same folder before anyone writes to it
    lock = RunLock(folder.path)
    setup_console()  # so a stale-lock takeover is reported
    _on_every_process(state, lock.acquire if main else None)
    log_to_file(folder.training_log if main else None)
    pusher = HubPushCallback(folder.path, cfg.hub_repo_id, cfg.hub_private) if cfg.push_to_hub and main else None
    callbacks = [*callbacks, pusher] if pusher else callbacks
    try:
        with _signals_interrupt():
            final = _run_stages(cfg, config_file, callbacks, state, task, splits, records, created_at,
                                (saved.trackers if saved else None) or {})
        if pusher is not None:
            pusher.finish()
            logger.info("run %s is on the Hub: %s", folder, cfg.hub_repo_id)
        return final
    except BaseException:
        if pusher is not None:  # let the stages already pushing land; the run's own error is what is raised
            try:
                pusher.finish(final_push=False)
            except Exception as exc:  # noqa: BLE001
                logger.warning("push of a finished stage also failed: %s", exc)
        raise
    finally:
        lock.release()


@contextlib.contextmanager
def _signals_interrupt():
    """While a run trains, SIGTERM and SIGINT raise ``Interrupted`` (the run is then marked interrupted)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signum, signal.SIG_IGN)  # a second signal must not interrupt writing run.json
        raise Interrupted(signal.Signals(signum).name, 128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _on_every_process(state, action) -> None:
    """Run ``action`` on the main process; if it raises an hfstage error, raise it on every process.

    Without this a refusal on the main process would leave the other processes waiting forever.
    """
    error = None
    if action is not None:
        try:
            action()
        except CheckpointError as exc:
            error = str(exc)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        box = [error]
        broadcast_object_list(box, from_process=0)
        error = box[0]
    if error:
        raise CheckpointError(error)


def _check_shared_output(state, folder: RunDir) -> None:
    """Every process sees the run.json the main process just wrote: the run folder is written once and read by all
    (the previous stage, the checkpoint to resume), so nodes that do not share output_dir's filesystem would train
    from different weights. Refused on every process at once, before any stage."""
    if state.num_processes < 2:
        return
    from accelerate.utils import gather_object

    seen = gather_object([(folder.run_json.is_file(), socket.gethostname())])
    blind = sorted({f"rank {rank} ({host})" for rank, (ok, host) in enumerate(seen) if not ok})
    if blind:
        raise ConfigError(f"output_dir {folder.path}: {', '.join(blind)} cannot see the run.json the main process wrote "
                          "there: the nodes do not share this folder. hfstage writes the run folder once (global "
                          "main process) and every process reads the previous stage and its checkpoints from it: put "
                          "output_dir on a filesystem every node mounts (NFS, Lustre, a cloud file store), by the "
                          "same path on every node")


_TIMED_OUT = ("timed out", "timeout")
_PEER_GONE = ("connection closed", "connection reset", "broken pipe", "connection refused", "socket closed",
              "end of file", "peer")


def collective_failure(exc: BaseException, stage: str | None, processes: int, timeout: float) -> StageError | None:
    """The error to report when a collective operation of a distributed run failed because another process stalled
    (a timeout: ``failed``) or died (its connection closed: ``PeerLost``, the run ``interrupted``); None for any
    other error, and in a single process."""
    if processes < 2 or not isinstance(exc, RuntimeError):
        return None
    text = str(exc).lower()
    where = stage or "the run"
    if any(k in text for k in _TIMED_OUT):
        return StageError(f"{where}: a collective operation across the {processes} processes timed out after "
                          f"{timeout:g} s (training_args.ddp_timeout): another process stalled or hung (stopped, "
                          "swapping, stuck reading data); the stage's last checkpoint is kept: rerun the same command "
                          "to resume")
    if any(k in text for k in _PEER_GONE):
        return PeerLost(f"{where}: another process of the run died ({first_line(exc)[:200]}); the stage's last "
                        "checkpoint is kept: rerun the same command to resume")
    return None


def _run_stages(cfg, config_file, callbacks, state, task, splits, records: list[StageRecord], created_at,
                tracker_ids: dict) -> RunRecord:
    main = state.is_main_process
    folder = RunDir(cfg.output_dir)
    tracking: CurriculumTracking | None = None
    current: str | None = None  # the stage being trained

    def record_run(status: str, error: str | None = None) -> RunRecord:
        run = RunRecord.build(cfg, config_file, state.num_processes, records, status, created_at, error,
                              current if error else None, tracking.ids if tracking else tracker_ids)
        if main:
            folder.write(run)
        return run

    def record_end(status: str, error: str) -> None:
        """Mark the run failed or interrupted; the error that ended it is what is raised, whatever happens here."""
        if not main:
            return
        try:
            record_run(status, error)
        except OSError:  # the disk may be the problem: the error itself is what matters
            logger.error("could not record the %s run in %s", status, folder.run_json)
        if tracking is not None:
            tracking.finish(status)

    if main:
        folder.remove_stale_tmp()
        record_run("running")
        logger.info("run %s: %d stages, %d finished, world size %d", folder, len(cfg.stages), len(records),
                    state.num_processes)
    state.wait_for_everyone()
    try:
        _check_shared_output(state, folder)
        if main and any(r != "none" for r in cfg.report_to):
            tracking = CurriculumTracking(cfg.report_to, folder.path, cfg.project, cfg.to_dict(), tracker_ids)
            record_run("running")  # the tracker run ids, so a resumed run logs to the same tracker runs
        train_sha256 = split_sha256(cfg, task, splits, "train")  # once per run
        for index, stage in enumerate(cfg.stages, 1):
            if index <= len(records):
                logger.info("stage %d '%s' already finished; skipping", index, stage.name)
                continue
            current = stage_dirname(index, stage.name)
            records.append(train_stage(cfg, task, splits, index, stage, records, folder, callbacks, state, train_sha256,
                                       tracking))
            current = None
            if main:
                record_run("running")
                draw_curves(folder.path / CURVES_PNG, records, cfg.metric_for_best_model)
    except Interrupted as exc:
        record_end("interrupted", f"stopped by {exc.signal_name}")
        raise
    except KeyboardInterrupt:
        record_end("interrupted", "stopped by KeyboardInterrupt")
        raise
    except Exception as exc:
        lost = collective_failure(exc, current, state.num_processes, ddp_timeout(cfg.stages) or 1800)
        if lost is not None:  # another process died or stalled: one line naming the stage, not a gloo traceback
            record_end("interrupted" if isinstance(lost, PeerLost) else "failed", str(lost))
            raise lost from None
        record_end("failed", str(exc) if isinstance(exc, HfstageError) else f"{type(exc).__name__}: {exc}")
        raise
    final = RunRecord.build(cfg, config_file, state.num_processes, records, "finished", created_at,
                            trackers=tracking.ids if tracking else tracker_ids)
    if main:
        folder.write(final)
        if tracking is not None:
            tracking.finish("finished")
        logger.info("finished; best stage %s (%s)", final.best_stage, final.best_stage_dir)
        print(format_stage_table(records, final.best_stage, task.headline_metrics), flush=True)
    state.wait_for_everyone()
    return final


def split_sha256(cfg: RunConfig, task, splits, name: str) -> str:
    """SHA-256 of the run's ``train`` or ``eval`` split: what a stage trained on, so stacking can refuse leaks."""
    given = getattr(splits, f"{name}_sha256")
    if given:
        return given
    return task.data_fingerprint(cfg.data, f"{name}_file")
