"""hfstage's logger: one line per event to stderr, and a run's events also to its ``training.log``.

Entry points (the CLI) call ``setup_console()`` once; the curriculum asks for the run's log file with
``log_to_file(path)`` (main process only) once the run folder is locked.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

logger = logging.getLogger("hfstage")
FORMAT = "%(asctime)s %(levelname)s %(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (it may be replaced after set-up, e.g. by pytest)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_console() -> None:
    """hfstage's INFO lines to stderr (once per process; calling again changes nothing)."""
    logger.setLevel(logging.INFO)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False


def log_to_file(path: Path | None) -> None:
    """Send hfstage's lines to ``path`` too, instead of any file it logged to before (None: to no file)."""
    setup_console()
    for h in list(logger.handlers):
        if isinstance(h, logging.FileHandler):
            logger.removeHandler(h)
            h.close()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
