"""One writer per results folder: a script or ``run_study.py`` holds its folder's lock for the whole
invocation, so two invocations never write the same result files at once.

The lock is an OS lock (``fcntl.flock``) on ``<results>/.homework.lock``: the kernel releases it when
its process ends, however it ends, so a lock left by a killed process is simply taken over. The file
holds the holder's process id, for the message of a second invocation, which stops at once (exit 2)
rather than waiting: a run takes minutes to hours, and the user decides whether to stop the other one.

``run_study.py`` holds the lock while its child scripts write into the same folder: it names the lock
file in ``$HOMEWORK_RESULTS_LOCK`` for them, and a child whose parent process holds that lock (its
process id is in the file) writes under the parent's lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from utils.engine.errors import UsageError
from utils.engine.files import writing

LOCK_NAME = ".homework.lock"
LOCK_ENV = "HOMEWORK_RESULTS_LOCK"
log = logging.getLogger(__name__)

_held: dict[Path, int] = {}      # lock file -> open descriptor, for the locks this process holds


def acquire_results_lock(folder: Path) -> Path:
    """Hold the lock of ``folder`` (an existing folder) until :func:`release_results_locks` or the
    end of the process; returns the lock file. Raises :class:`UsageError` if another process holds it.
    Acquiring a lock this process (or its parent, see the module docstring) holds already is a no-op."""
    path = (Path(folder) / LOCK_NAME).resolve()
    if path in _held or _held_by_parent(path):
        return path
    with writing(path, "the lock file"):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(path)
        os.close(fd)
        raise UsageError(f"another run (process {holder or 'unknown'}) is writing to {folder} (lock {path}); wait "
                         f"for it to end or stop it, or give this run another --results-dir") from None
    except BaseException:
        os.close(fd)
        raise
    stale = _holder(path)
    if stale:
        log.info("taking over the lock of %s from process %s, which has ended", folder, stale)
    with writing(path, "the lock file"):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[path] = fd
    return path


def release_results_locks() -> None:
    """Release every lock this process holds; the files stay (emptied), so no other process can
    lock a file that is then unlinked under it."""
    while _held:
        path, fd = _held.popitem()
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass      # the lock goes with the descriptor all the same
        finally:
            os.close(fd)


def child_env(lock: Path) -> dict[str, str]:
    """The environment for a child process that writes under this process's lock ``lock``."""
    return {**os.environ, LOCK_ENV: str(lock)}


def _held_by_parent(path: Path) -> bool:
    return os.environ.get(LOCK_ENV) == str(path) and _holder(path) == str(os.getppid())


def _holder(path: Path) -> str:
    """The process id written in the lock file ('' when none is)."""
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""
