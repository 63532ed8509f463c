"""The engine's user-error types, below every engine module (cli re-exports UsageError)."""

from __future__ import annotations

import errno
from pathlib import Path


class UsageError(RuntimeError):
    """A problem with what the user asked for; reported in one line, exit code 2."""


# What to do about a failed write, by errno: the user must learn the fix from the one line alone.
_FIXES = {
    errno.ENOSPC: "free space on that disk (or point the output options elsewhere)",
    errno.EDQUOT: "free space within your disk quota (or point the output options elsewhere)",
    errno.EISDIR: "it is a folder: move or remove that folder",
    errno.ENOTDIR: "a part of that path is a file, not a folder: move or remove that file",
    errno.EEXIST: "a file occupies that path (or a folder above it): move or remove that file",
    errno.ENOENT: "a folder of that path vanished while the run wrote into it: check the disk and the folder",
    errno.EACCES: "give yourself write permission there (or point the output options elsewhere)",
    errno.EPERM: "give yourself write permission there (or point the output options elsewhere)",
    errno.EROFS: "the disk is read-only: point the output options at a writable disk",
}
_RESUME = "then run the same command again: finished results are kept and skipped"


class OutputError(UsageError):
    """A file the package writes could not be written (any OSError: wrong kind of path, no permission,
    vanished folder, full disk). One type for every write, so the CLI reports each the same way: one
    line naming the path, the cause and the fix, exit code 2. Earlier results stay intact because
    every write is atomic (:mod:`utils.engine.files`)."""

    def __init__(self, path: Path | str, cause: OSError, what: str = ""):
        self.path, self.cause = Path(path), cause
        reason = cause.strerror or one_line(cause)
        fix = _FIXES.get(cause.errno or 0, "check that path and the disk")
        super().__init__(f"{what + ' ' if what else ''}{path} is not writable ({reason}); {fix}, {_RESUME}")


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (library messages span lines), or its type's name."""
    return " ".join(str(exc).split()) or type(exc).__name__
