"""Units of a job and their state on disk (the executors' shared helpers)."""

from __future__ import annotations

import dataclasses

from hfstage.executors.base import LOCAL


def as_unit(cfg):
    """The config a unit trains and saves: the executor belongs to the job, not to any run folder (so a rerun with
    another executor finds the same runs finished)."""
    return dataclasses.replace(cfg, executor=dict(LOCAL), stages=[dataclasses.replace(s) for s in cfg.stages])


def run_finished(cfg) -> bool:
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
