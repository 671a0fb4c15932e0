"""Files: checksums, outputs written atomically, the scratch of killed runs and its sweeping, JSON, lines."""
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

from lib.errors import disk_full, log


def sha256sum(path: Path) -> str:
    return file_digest(path, "sha256")


def file_digest(path: Path, algorithm: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a scratch directory that replaces `final` only if the block succeeds, so a failed or
    interrupted stage never leaves a half-written output behind (a killed one leaves the scratch, which
    the next stage run removes: sweep_scratch)."""
    final = Path(final)
    with fresh_scratch(final.with_name(f".{final.name}.tmp")) as tmp:
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)


@contextlib.contextmanager
def scratch_dir(final: Path):
    """A scratch directory beside `final` (.<name>.scratch.tmp), removed after the block: a stage's
    intermediate files stay on the file system of its outputs, and a killed run's scratch is removed by
    the next stage run (sweep_scratch), which the system's temp directory would keep."""
    final = Path(final)
    with fresh_scratch(final.with_name(f".{final.name}.scratch.tmp")) as tmp:
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def fresh_scratch(path: Path):
    """An empty directory at `path` (whatever was there is removed), locked for the block (writing_scratch)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    with writing_scratch(path):
        yield path


def partial_file(dest: Path) -> Path:
    """Where a download to `dest` is written until it is complete."""
    return dest.with_name(dest.name + ".part")


# Scratch: atomic_dir's .<output>.tmp directories and downloads' .part files, under these directories.
SCRATCH_ROOTS = ("data", "models/compressed")
SCRATCH_PATTERNS = (".*.tmp", "*.part")
_scratch_locks: set[int] = set()  # descriptors of the scratch this process writes, each flock-ed


def _drop_scratch_locks_in_child() -> None:
    """A forked child (fairseq-preprocess's workers, data loaders) shares its parent's locks; closing its
    copies lets a lock die with the parent, even when a kill -9 leaves the child running a while."""
    for fd in _scratch_locks:
        os.close(fd)
    _scratch_locks.clear()


os.register_at_fork(after_in_child=_drop_scratch_locks_in_child)


@contextlib.contextmanager
def naming_disk_full(path: Path):
    """For the block: a "no space left on device" error that names no file (a write() to an open file, a
    worker process's) is given `path`, what the block writes, so that the stage's error can name it."""
    try:
        yield
    except BaseException as e:
        full = disk_full(e)
        if full is not None and full.filename is None:
            full.filename = str(path)
        raise


@contextlib.contextmanager
def writing_scratch(path: Path):
    """Lock the scratch file or directory `path` for the block: sweep_scratch leaves it alone. The kernel
    drops the lock when this process dies, kill -9 included. A full disk in the block names `path`."""
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    _scratch_locks.add(fd)
    try:
        with naming_disk_full(path):
            yield path
    finally:
        if fd in _scratch_locks:  # a forked child closed it already
            _scratch_locks.discard(fd)
            os.close(fd)


def sweep_scratch() -> None:
    """Remove the scratch that killed runs left behind. A kill -9 skips every cleanup, and when DVC then
    restores the killed stage from its run-cache, that stage never runs again to replace its own scratch;
    so every stage sweeps at its start. Scratch a live process still writes is locked, and kept."""
    found = sorted({p for root in SCRATCH_ROOTS for pattern in SCRATCH_PATTERNS for p in Path(root).rglob(pattern)})
    for path in found:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # inside scratch removed just before
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a running stage writes it
        else:
            log(f"removing {path}, left by an interrupted run")
            if path.is_dir():  # ignore_errors, missing_ok: torchrun's ranks sweep at the same time
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        finally:
            os.close(fd)


def write_json(path: Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def iter_lines(path: Path):
    """The lines of a text file without their line ends, streamed."""
    with open(path) as f:
        for line in f:
            yield line.rstrip("\n")


def read_lines(path: Path) -> list[str]:
    """Every line of a small file (evaluation's test sentences), without line ends."""
    with open(path) as f:
        return [line.rstrip("\n") for line in f]
