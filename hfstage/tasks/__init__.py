"""Tasks: one module per task kind, each a ``Task`` (``tasks/base.py``) registered by name.

A new task kind is a module here (its ``Task`` subclass: fields, facts and hooks) plus its data module; the
curriculum engine is the same for all of them.
"""

from __future__ import annotations

from hfstage.tasks import images, pairs, sequences, speech  # noqa: F401  (registers the tasks)
from hfstage.tasks.base import TASKS, CardFacts, Field, Splits, Task, as_split_ref, load_run_splits

__all__ = ["TASKS", "CardFacts", "Field", "Splits", "Task", "as_split_ref", "load_run_splits"]
