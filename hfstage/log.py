"""hfstage's logger: one line per event to stderr, and a run's events also to its ``training.log``.

Entry points (the CLI) call ``setup_console()`` once; the curriculum asks for the run's log file with
``log_to_file(path)`` (main process only) once the run folder is locked.
"""

from __future__ import annotations

import logging
import os
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


VERBOSE_ENV = "HFSTAGE_VERBOSE"
_verbose: bool | None = None


def verbose() -> bool:
    """Whether the libraries' own console output is wanted (``--verbose`` or ``HFSTAGE_VERBOSE=1``): the Trainer's
    printed log dicts, progress bars in a non-terminal, weight-loading and dataset bars."""
    if _verbose is not None:
        return _verbose
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def set_verbose(on: bool) -> None:
    global _verbose
    _verbose = on
    _quiet_libraries()


def _quiet_libraries() -> None:
    """Weight-loading, download and dataset progress bars: off unless verbose (one line per event is hfstage's).
    Libraries not imported yet read the setting from their environment variables when they are (transformers from
    huggingface_hub's), so a command that never imports them does not pay for importing them here."""
    on = verbose()
    for variable in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
        if on:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = "1"
    if "transformers" in sys.modules:
        import transformers.utils.logging as tlog

        tlog.enable_progress_bar() if on else tlog.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.enable_progress_bars() if on else datasets.disable_progress_bars()
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.utils

        huggingface_hub.utils.enable_progress_bars() if on else huggingface_hub.utils.disable_progress_bars()


def main_process_only(main: bool) -> None:
    """In a multi-process run only the main process prints hfstage's INFO lines; the others print warnings."""
    setup_console()
    logger.setLevel(logging.INFO if main else logging.WARNING)


def setup_console() -> None:
    """hfstage's INFO lines to stderr, the libraries' bars off unless verbose (once per process; calling again
    changes nothing)."""
    if any(isinstance(h, _StderrHandler) for h in logger.handlers):
        return
    logger.setLevel(logging.INFO)
    _quiet_libraries()
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
