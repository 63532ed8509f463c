"""The engine's user-error type, below every engine module (cli re-exports it)."""


class UsageError(RuntimeError):
    """A problem with what the user asked for; reported in one line, exit code 2."""
