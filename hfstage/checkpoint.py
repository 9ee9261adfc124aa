"""Atomic writes: a file or a folder appears complete or not at all.

Everything is written to a temporary name in the same folder and renamed into place, so a process
killed at any moment never leaves a stage that looks finished but is not.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

TMP_SUFFIX = ".tmp"


def atomic_write(path: str | Path, write: Callable[[IO], None], binary: bool = False) -> None:
    """Call ``write(file)`` on a temporary file in the same folder, fsync it, and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text))


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def atomic_save_npz(path: str | Path, **arrays) -> None:
    """``np.savez`` written atomically (no pickles)."""
    import numpy as np

    atomic_write(path, lambda fh: np.savez(fh, **arrays), binary=True)


def atomic_save_npy(path: str | Path, array) -> None:
    import numpy as np

    atomic_write(path, lambda fh: np.save(fh, array, allow_pickle=False), binary=True)


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


RUN_FORMAT = 1  # run.json layout this version writes and the newest it reads


def read_run_record(path: str | Path) -> dict:
    """A run.json, refused with a clear message when a newer hfstage wrote it (or it is not a run record)."""
    from hfstage.errors import CheckpointError

    path = Path(path)
    try:
        record = read_json(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent}: no run.json; not an hfstage run folder") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable run record ({exc})") from None
    if not isinstance(record, dict) or "config" not in record:
        raise CheckpointError(f"{path}: not an hfstage run record (no 'config')")
    version = record.get("format_version", 1)
    if not isinstance(version, int) or version > RUN_FORMAT:
        raise CheckpointError(f"{path}: format_version {version!r} was written by a newer hfstage (this version reads "
                              f"up to {RUN_FORMAT}); upgrade hfstage to use this run")
    return record


def staging_dir(final: str | Path) -> Path:
    """A fresh temporary folder next to ``final``, to be filled and then published."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=TMP_SUFFIX, dir=final.parent))


def publish_dir(staged: str | Path, final: str | Path) -> None:
    """Rename a fully written staging folder to its final name (replacing an old one)."""
    staged, final = Path(staged), Path(final)
    for child in staged.iterdir():
        if child.is_file():
            with open(child, "rb") as fh:
                os.fsync(fh.fileno())
    if final.exists():
        old = final.with_name(f".{final.name}.old{TMP_SUFFIX}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, final)


def remove_stale_tmp(folder: str | Path) -> None:
    """Delete leftovers of writes that were killed half-way (never mistaken for results)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for child in folder.iterdir():
        if child.name.startswith(".") and child.name.endswith(TMP_SUFFIX):
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


_FILE_DIGESTS: dict[tuple, str] = {}  # (path, inode, size, mtime_ns) -> SHA-256: a file read once per process


def fingerprint(path: str | Path) -> str:
    """SHA-256 of a file's bytes -- or of a folder's files (relative names and bytes, in sorted order):
    which data a model saw, checkable later (stacking refuses leaks). A file is read once per process (a run
    asks for its training file's digest to name its datasets cache entry and again to record it)."""
    path = Path(path)
    if not path.is_dir():
        stat = path.stat()
        key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if key not in _FILE_DIGESTS:
            _FILE_DIGESTS[key] = _digest([path], None)
        return _FILE_DIGESTS[key]
    return _digest(sorted(p for p in path.rglob("*") if p.is_file()), path)


def _digest(files: list[Path], root: Path | None) -> str:
    digest = hashlib.sha256()
    for file in files:
        if root is not None:
            digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


_HELD_LOCKS: set[str] = set()  # locks this process holds now (a lock file naming this pid but not here is stale)


class RunLock:
    """``<output_dir>/.lock``: one run per folder at a time; a lock left by a dead process is taken over.

    The file holds the owner's pid, host and start time. A lock from another host cannot be checked
    for liveness, so it is refused with the path to delete once that run is known to be gone.
    """

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / ".lock"
        self.held = False

    def acquire(self) -> None:
        import logging
        import socket
        import time

        from hfstage.errors import CheckpointError

        def unwritable(exc: OSError) -> CheckpointError:
            return CheckpointError(f"{self.path.parent}: the output_dir cannot be written ({exc.strerror or exc}); "
                                   "choose a writable output_dir or fix this one")

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise unwritable(exc) from None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = json.loads(self.path.read_text())
                except (OSError, ValueError):
                    owner = {}
                mine_but_released = owner.get("pid") == me["pid"] and str(self.path) not in _HELD_LOCKS
                if owner.get("host") == me["host"] and isinstance(owner.get("pid"), int) and (
                        mine_but_released or not _alive(owner["pid"])):
                    logging.getLogger("hfstage").warning("%s: taking over a stale lock of pid %s", self.path, owner["pid"])
                    self.path.unlink(missing_ok=True)
                    continue
                who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} since {owner.get('started_at', '?')}"
                raise CheckpointError(
                    f"{self.path.parent}: another hfstage run ({who}) is using this output_dir; wait for it, or delete "
                    f"{self.path} if that process is gone"
                ) from None
            except OSError as exc:
                raise unwritable(exc) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            _HELD_LOCKS.add(str(self.path))
            return
        raise CheckpointError(f"{self.path}: could not take the lock")

    def release(self) -> None:
        """Remove the lock; on a folder that became read-only (or vanished) only warn: the lock is then
        stale, and the next run on this host takes it over (its pid is gone). Releasing must never hide
        the error that ended the run."""
        if self.held:
            self.held = False
            _HELD_LOCKS.discard(str(self.path))
            try:
                self.path.unlink(missing_ok=True)
            except OSError as exc:
                import logging

                logging.getLogger("hfstage").warning("%s: could not remove the lock (%s); the next run takes it over",
                                                     self.path, exc.strerror or exc)


def lock_holder_alive(folder: str | Path) -> bool:
    """Whether a process holds ``folder``'s run lock: False when there is no lock or its process (on this host) is
    gone, e.g. killed with SIGKILL; True when it lives or cannot be checked (another host, unreadable lock)."""
    import socket

    path = Path(folder) / ".lock"
    try:
        owner = json.loads(path.read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True
    if not isinstance(owner, dict) or owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return True
    return _alive(owner["pid"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
