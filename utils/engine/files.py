"""Every output file of the package is written here, one way: temp file + rename.

A reader (a resumed run, the README renderer, a person) never sees half a file, and an interrupted
run leaves the previous version intact. Every failure to write (wrong kind of path, no permission,
vanished folder, full disk) is raised as one type, :class:`~utils.engine.errors.OutputError`, which
the command line reports in one line with exit code 2.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np

from utils.engine.errors import OutputError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def writing(path: Path, what: str = "") -> Iterator[None]:
    """Report any OSError raised while writing ``path`` as an :class:`OutputError` naming it."""
    try:
        yield
    except OSError as exc:
        raise OutputError(path, exc, what) from exc


def make_dir(path: Path) -> Path:
    """Create the folder ``path`` (and its parents) if needed; a file in its place is an OutputError."""
    path = Path(path)
    with writing(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Let ``write`` fill a temp file in ``path``'s folder, then ``os.replace`` it onto ``path``.

    On failure the temp file is removed and the previous ``path`` is untouched.
    """
    path = Path(path)
    make_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with writing(path):
        try:
            _write_temp(tmp, write)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise


def _write_temp(tmp: Path, write: Callable[[BinaryIO], None]) -> None:
    """The one place bytes reach the disk: on a full disk it is here that the OSError arises."""
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=_json_default) + "\n")


def save_torch(path: Path, obj: Any) -> None:
    """``torch.save`` (checkpoints, weights, caches), atomic like every other write."""
    import torch    # here: the lock (utils.engine.lock) and the JSON writers are used by light processes

    atomic_write(path, lambda fh: torch.save(obj, fh))


def remove_file(path: Path) -> None:
    """Delete ``path`` if it exists (a finished run's checkpoint)."""
    with writing(path):
        Path(path).unlink(missing_ok=True)


class _LogFile(logging.FileHandler):
    """A log file whose write failures end the run like any other failed write, instead of
    logging's default of a traceback on stderr for every record while the run goes on."""

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handleError(record)
            return
        logging.getLogger().removeHandler(self)   # the report of this failure must not come here again
        with contextlib.suppress(OSError):
            self.close()
        raise OutputError(self.baseFilename, exc, "the log file") from exc


def open_log_file(path: Path) -> logging.FileHandler:
    """A logging handler appending to ``path`` (created with its folder)."""
    path = Path(path)
    make_dir(path.parent)
    with writing(path, "the log file"):
        return _LogFile(path, mode="a", encoding="utf-8")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def read_json(path: Path) -> Any | None:
    """A JSON file's content, or None (with a warning) if it is missing or does not parse."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        log.warning("result file %s does not parse (%s); it will be re-run", path, exc)
        return None
