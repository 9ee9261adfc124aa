"""Exceptions hfstage raises for problems a user can fix.

Every error names the file and the field it is about, so the CLI can print it as one line and exit
with code 2 before anything is written.
"""

from collections.abc import Iterator
from contextlib import contextmanager


def first_line(exc: BaseException) -> str:
    """An exception's message as one line (its first), or its type's name when it has none."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class HfstageError(Exception):
    """Base class: a problem with the input, reported without a traceback."""

    exit_code = 2


class ConfigError(HfstageError):
    """A config file or a ``key=value`` override is malformed, unknown or out of range."""


class DataError(HfstageError):
    """A data file is missing, unreadable, or holds arrays of the wrong key, shape, dtype or value."""


class CheckpointError(HfstageError):
    """A checkpoint or run folder is missing files or does not match what was asked for."""


class StageError(HfstageError):
    """A stage could not finish (for example its loss became NaN); earlier stages are intact."""

    exit_code = 1


class PeerLost(StageError):
    """Another process of a distributed run died (its connection closed mid-collective): the run is marked
    ``interrupted``, since a rerun of the same command resumes from the stage's last checkpoint."""


class HubError(HfstageError):
    """The Hub refused or failed a request (after retries), or no token was available to write."""

    exit_code = 1


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT while a run trains: the run is marked ``interrupted`` and the process exits (a rerun of the
    same command resumes). A ``KeyboardInterrupt``, so ``except Exception`` blocks never swallow it."""

    def __init__(self, signal_name: str, exit_code: int):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.exit_code = exit_code


@contextmanager
def about_recipe(path) -> Iterator[None]:
    """A ``ConfigError`` raised inside (a model or stage field checked against its constructor, a data setting)
    names the recipe file it is about, as the errors of reading the file already do."""
    try:
        yield
    except ConfigError as exc:
        if path is None or str(exc).startswith(str(path)):
            raise
        raise type(exc)(f"{path}: {exc}") from None
