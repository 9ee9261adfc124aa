"""Where the independent units of a run train: the folds of ``folds: N``, the seeds of ``seeds: [...]`` and the
bases of a stacking recipe.

- ``executor: local`` (the default): one after another in this process, as ``hfstage`` always did.
- ``executor: ray``: every unit that is not finished yet is a Ray task asking for ``resources`` (default one
  CPU; ``num_gpus`` may be a fraction so that several small units share a GPU), started side by side on a
  local Ray or the cluster at ``ray_address``. Each task trains its unit with the same code as the local path
  (``curriculum.run`` in the worker process) into the same folder, so ``oof.npy``, ``cv.json``, seed tables
  and ``hfstage stack`` read the result unchanged; what joins the units (out-of-fold files, the seed table,
  the meta-learner) runs here once every unit is done. A finished unit is skipped on a rerun; a unit that
  fails does not stop the others, and the job then fails naming each failed unit and its error.

The workers start in this process's working folder, so relative paths in recipes mean what they mean here;
on a multi-machine cluster the data and ``output_dir`` must be on a filesystem every node mounts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from hfstage.config import RunConfig
from hfstage.errors import ConfigError, HfstageError, StageError, first_line

logger = logging.getLogger("hfstage")


@dataclass
class Unit:
    """One independent training: a complete run folder of its own."""

    name: str  # fold_1, seed_3, seed_3/fold_0, or a stack base's name
    cfg: RunConfig
    config_file: str | None = None


def as_unit(cfg: RunConfig) -> RunConfig:
    """The config a unit trains and saves: the executor settings belong to the job, not to any run folder (so a
    rerun with the other executor finds the same runs finished)."""
    return dataclasses.replace(cfg, executor="local", ray_address=None, resources={},
                               stages=[dataclasses.replace(s) for s in cfg.stages])


def run_finished(cfg: RunConfig) -> bool:
    """Whether ``cfg.output_dir`` holds a finished run of this very config."""
    from hfstage.run_dir import RunDir

    folder = RunDir(cfg.output_dir)
    if not folder.is_run():
        return False
    try:
        run = folder.read()
    except Exception:  # noqa: BLE001  an unreadable run.json: the unit itself reports it
        return False
    return folder.status(run) == "finished" and not folder.differences(run, cfg)


def run_units(units: list[Unit], address: str | None = None, resources: dict | None = None) -> None:
    """Train every unit that is not finished as a Ray task (``executor: ray``; the local executor is the sequential
    code path itself); raise naming the units that failed."""
    todo = []
    for unit in units:
        if run_finished(unit.cfg):
            logger.info("%s: finished, skipped (%s)", unit.name, unit.cfg.output_dir)
        else:
            todo.append(unit)
    if not todo:
        return
    from hfstage.devices import distributed_state

    if distributed_state().num_processes > 1:
        raise ConfigError("executor: ray is started from one process (hfstage train, not accelerate launch with "
                          "several): each unit then trains in a process of its own")
    _run_on_ray(todo, address, dict(resources or {}))


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("executor: ray needs Ray: pip install 'hfstage[ray]'") from None
    return ray


def _run_on_ray(units: list[Unit], address: str | None, resources: dict) -> None:
    ray = _ray()
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address, log_to_driver=True)
            else:
                ray.init(include_dashboard=False, log_to_driver=True)
        except Exception as exc:  # noqa: BLE001  Ray raises ConnectionError, RuntimeError, ValueError ...
            raise ConfigError(f"ray_address: could not start or join Ray{f' at {address}' if address else ''}: "
                              f"{first_line(exc)}") from None
    cluster = ray.cluster_resources()
    ask = {"num_cpus": 1.0, **resources}
    for key, amount in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
        if ask.get(key, 0) > cluster.get(amount, 0):
            raise ConfigError(f"resources.{key}: each unit asks for {ask[key]:g}, the Ray cluster has "
                              f"{cluster.get(amount, 0):g} {amount}(s) in all")
    task = ray.remote(_train_unit)
    cwd = os.getcwd()
    logger.info("executor ray: %d unit(s) (%s), each with %s, on a cluster of %g CPU(s), %g GPU(s)", len(units),
                ", ".join(u.name for u in units), ", ".join(f"{k} {v:g}" for k, v in ask.items()),
                cluster.get("CPU", 0), cluster.get("GPU", 0))
    refs = [task.options(name=f"hfstage:{u.name}", max_retries=0, **ask).remote(u.cfg.to_dict(), u.config_file, cwd,
                                                                                   ask["num_cpus"])
            for u in units]
    failures = []
    for unit, ref in zip(units, refs):
        try:
            error = ray.get(ref)
        except ray.exceptions.RayError as exc:  # the worker died, or the task raised outside hfstage's errors
            cause = getattr(exc, "cause", None)
            error = first_line(cause) if isinstance(cause, BaseException) else first_line(exc)
        if error:
            failures.append(f"{unit.name} ({unit.cfg.output_dir}): {error}")
            logger.error("executor ray: %s failed: %s", unit.name, error)
        else:
            logger.info("executor ray: %s finished", unit.name)
    if failures:
        raise StageError(f"executor ray: {len(failures)} of {len(units)} unit(s) failed; the finished ones are kept "
                         f"and a rerun trains only what is missing: " + "; ".join(failures))


def _train_unit(config: dict, config_file: str | None, cwd: str, num_cpus: float) -> str | None:
    """A Ray task: train one unit in this worker process; None when it finished, else its error as one line."""
    import torch

    from hfstage.config import config_from_dict
    from hfstage.curriculum import run
    from hfstage.log import setup_console

    if Path(cwd).is_dir():
        os.chdir(cwd)
    torch.set_num_threads(max(1, int(num_cpus)))
    setup_console()
    try:
        cfg = config_from_dict(config, config_file or "<unit>")  # quick_test is already applied to its stages
        run(dataclasses.replace(cfg, quick_test=bool(config.get("quick_test"))), config_file)
    except HfstageError as exc:
        return str(exc)
    return None
