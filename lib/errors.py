"""Errors a user can act on, and logging."""
import errno
import logging
import sys
import time

# our own lines: printed by log(), and written to the stage's log file by the handler lib/stage.py gives it
PIPELINE = logging.getLogger("pipeline")
PIPELINE.propagate = False


class StageError(Exception):
    """An error the user can act on; printed without a traceback."""


class DataError(StageError):
    """Bad input data, located by file and (when known) line."""

    def __init__(self, path, message, line=None):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")


def log(message: str, console: bool = True) -> None:
    """A timestamped line of ours: on stderr (unless `console` is False) and in the stage's log file."""
    if console:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
    PIPELINE.info(message)


def summary(label: str, *facts: str) -> None:
    """The one line a stage ends with: `label: fact, fact, ...` (empty facts left out)."""
    log(f"{label}: {', '.join(f for f in facts if f)}")


def in_context_chain(error: BaseException, kind: type, where=lambda e: True):
    """`error` or the first exception it was raised while handling, that is a `kind` (and `where` holds)."""
    while error is not None and not (isinstance(error, kind) and where(error)):
        error = error.__context__
    return error


def disk_full(error: BaseException) -> OSError | None:
    """The "no space left on device" error that `error` is or was raised while handling, if any."""
    return in_context_chain(error, OSError, lambda e: e.errno == errno.ENOSPC)
