"""``executor: {type: ray, address: ..., resources: {...}}``: every unit that is not finished yet is a Ray task
asking for ``resources`` (default one CPU; ``num_gpus`` may be a fraction so that several small units share a GPU),
started side by side on a local Ray or the cluster at ``address``. Each task trains its unit with the same code as
the local executor (``curriculum.run`` in the worker process) into the same folder, so ``oof.npy``, ``cv.json``,
seed tables and ``hfstage stack`` read the result unchanged. A finished unit is skipped on a rerun; a unit that
fails does not stop the others, and the job then fails naming each failed unit and its error.

The workers start in this process's working folder, so relative paths in recipes mean what they mean here; on a
multi-machine cluster the data and ``output_dir`` must be on a filesystem every node mounts. The only module of
hfstage that imports Ray.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from hfstage.errors import ConfigError, HfstageError, StageError, first_line
from hfstage.executors.base import EXECUTORS, Executor, Unit

logger = logging.getLogger("hfstage")

RESOURCES = ("num_cpus", "num_gpus", "memory")
CLUSTER_KINDS = (("num_cpus", "CPU"), ("num_gpus", "GPU"))  # a unit's ask -> the cluster resource it draws on


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """The units side by side as Ray tasks (``pip install 'hfstage[ray]'``).

    ``address``: the Ray cluster to join (``auto``, ``HOST:6379``, ``ray://HOST:10001``); unset = a Ray already
    started in this process, else a local one on this machine. ``resources``: what each unit asks Ray for,
    ``{num_cpus: 2, num_gpus: 0.25}`` (a fraction of a GPU lets several small units share one; ``memory`` in
    bytes); default one CPU.
    """

    name = "ray"
    fans_out = True

    def __init__(self, address: str | None = None, resources: dict[str, float] | None = None):
        self.address = address
        self.resources = dict(resources or {})
        for key, amount in self.resources.items():
            if key not in RESOURCES:
                from hfstage.arguments import closest

                raise ConfigError(f"resources.{key}: not a resource a unit can ask for{closest(key, list(RESOURCES))} "
                                  f"(choose from {', '.join(RESOURCES)})")
            if amount < 0:
                raise ConfigError(f"resources.{key}: {amount:g} must be >= 0")

    def describe(self) -> str:
        ask = ", ".join(f"{k} {v:g}" for k, v in _ask(self.resources).items())
        return f"executor ray: each seed/fold a Ray task ({ask}) on {self.address or 'a local Ray'}"

    def slots(self) -> int:
        """The units that fit the cluster at once: its CPUs (GPUs) over what each unit asks for."""
        cluster = _start(self.address).cluster_resources()
        ask = _ask(self.resources)
        fits = [cluster.get(kind, 0) / ask[key] for key, kind in CLUSTER_KINDS if ask.get(key, 0) > 0]
        return max(1, int(min(fits))) if fits else 1

    def run(self, units: list[Unit], callbacks=()) -> None:
        from hfstage.devices import distributed_state
        from hfstage.executors.units import run_finished

        if callbacks:
            raise ConfigError("executor: ray: stage callbacks live in this process and cannot follow units trained "
                              "elsewhere; use executor: {type: local} with callbacks")
        todo = []
        for unit in units:
            if run_finished(unit.cfg):
                logger.info("%s: finished, skipped (%s)", unit.name, unit.cfg.output_dir)
            else:
                todo.append(unit)
        if not todo:
            return
        if distributed_state().num_processes > 1:
            raise ConfigError("executor: ray is started from one process (hfstage train, not accelerate launch with "
                              "several): each unit then trains in a process of its own")
        _run_on_ray(todo, self.address, self.resources)


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("executor: ray needs Ray: pip install 'hfstage[ray]'") from None
    return ray


def _ask(resources: dict) -> dict:
    """What each unit asks Ray for: one CPU unless ``resources`` says otherwise."""
    return {"num_cpus": 1.0, **resources}


def _start(address: str | None):
    """Ray, started (a local one) or joined (``address``) once per process."""
    ray = _ray()
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address, log_to_driver=True)
            else:
                ray.init(include_dashboard=False, log_to_driver=True)
        except Exception as exc:  # noqa: BLE001  Ray raises ConnectionError, RuntimeError, ValueError ...
            raise ConfigError(f"executor.address: could not start or join Ray{f' at {address}' if address else ''}: "
                              f"{first_line(exc)}") from None
    return ray


def _run_on_ray(units: list[Unit], address: str | None, resources: dict) -> None:
    ray = _start(address)
    cluster = ray.cluster_resources()
    ask = _ask(resources)
    for key, amount in CLUSTER_KINDS:
        if ask.get(key, 0) > cluster.get(amount, 0):
            raise ConfigError(f"executor.resources.{key}: each unit asks for {ask[key]:g}, the Ray cluster has "
                              f"{cluster.get(amount, 0):g} {amount}(s) in all")
    task = ray.remote(_train_unit)
    cwd = os.getcwd()
    logger.info("executor ray: %d unit(s) (%s), each with %s, on a cluster of %g CPU(s), %g GPU(s)", len(units),
                ", ".join(u.name for u in units), ", ".join(f"{k} {v:g}" for k, v in ask.items()),
                cluster.get("CPU", 0), cluster.get("GPU", 0))
    refs = [task.options(name=f"hfstage:{u.name}", max_retries=0, **ask).remote(u.cfg.to_dict(), u.config_file, cwd,
                                                                                   ask["num_cpus"], u.callbacks)
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


def _train_unit(config: dict, config_file: str | None, cwd: str, num_cpus: float, callbacks: tuple = ()) -> str | None:
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
        run(dataclasses.replace(cfg, quick_test=bool(config.get("quick_test"))), config_file, list(callbacks))
    except HfstageError as exc:
        return str(exc)
    return None
