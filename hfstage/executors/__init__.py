"""Executors: where the independent units of a job train, one module each behind ``EXECUTORS``
(``executors/base.py``): ``local`` (the default: in turn, in this process) and ``ray`` (side by side as Ray tasks).
"""

from __future__ import annotations

from hfstage.executors import local, ray  # noqa: F401  (registers the executors)
from hfstage.executors.base import EXECUTORS, LOCAL, Executor, Unit, build_executor, executor_spec, fans_out
from hfstage.executors.units import as_unit, run_finished

__all__ = ["EXECUTORS", "LOCAL", "Executor", "Unit", "as_unit", "build_executor", "executor_spec", "fans_out",
           "run_finished"]
