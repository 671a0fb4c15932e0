"""The entry point every stage runs through, and its console: our lines and real warnings on stderr,
everything else (fairseq's INFO stream, the model it prints) in the stage's log file."""
import contextlib
import logging
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

from lib.errors import PIPELINE, StageError, disk_full, log
from lib.files import sweep_scratch

LOG_DIR = Path("reports/logs")  # one file per stage run; git-ignored, not a DVC output
# known-harmless warnings of dependencies, silenced at their source unless verbose: (message regex, category)
HARMLESS_WARNINGS = [
    (r"hydra\.experimental\.(initialize|compose)\(\) is no longer experimental", UserWarning),
    (r"\s*The version_base parameter is not specified", UserWarning),  # Hydra14MigrationWarning
    (r"In 'config': Usage of deprecated keyword in package header", UserWarning),
    (r"\s*'config' is validated against ConfigStore schema", UserWarning),
    (r"\s*The strict flag in the compose API is deprecated", UserWarning),
    (r"'pin_memory' argument is set as true but no accelerator is found", UserWarning),  # fairseq on a CPU
    (r"`torch\.cuda\.amp\.autocast\(args\.\.\.\)` is deprecated", FutureWarning),  # fairseq's train_step
    # fairseq's decoder passes a bool padding mask with a float causal mask to torch's attention
    (r"Support for mismatched key_padding_mask and attn_mask is deprecated", UserWarning),
]
# loggers whose INFO lines are noise even in the log file: fairseq's speech task says "Please install
# tensorboardX" when imported (no task of this pipeline uses it)
QUIET_LOGGERS = ["fairseq.tasks.text_to_speech"]


def verbose() -> bool:
    return os.environ.get("PIPELINE_VERBOSE", "") not in ("", "0")


@contextlib.contextmanager
def stage_console(argv: list):
    """Our lines and every WARNING or worse on stderr; the INFO records of every library (DEBUG too when
    verbose) in reports/logs/<stage>.log. Verbose (`-v` or PIPELINE_VERBOSE=1) shows everything on stderr,
    harmless warnings included. Yields (argv without -v, the log file or None); restores logging on exit."""
    saved_env = os.environ.get("PIPELINE_VERBOSE")
    if "-v" in argv:
        os.environ["PIPELINE_VERBOSE"] = "1"  # torchrun's ranks inherit it
        argv = [a for a in argv if a != "-v"]
    level = logging.DEBUG if verbose() else logging.INFO
    rank = os.environ.get("RANK")  # torchrun's ranks: each its own file beside the launcher's
    name = re.sub(r"[^\w.]+", "-", " ".join([Path(sys.argv[0]).stem, *argv])).strip("-")
    path = LOG_DIR / f"{name}{'' if rank is None else '.rank' + rank}.log"
    handlers = []
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path, mode="w", encoding="utf-8"))
    except OSError:  # a read-only or full disk: the console still works
        path = None
    screen = logging.StreamHandler(sys.stderr)
    screen.setLevel(level if verbose() else logging.WARNING)
    for handler in [*handlers, screen]:
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root, quiet = logging.getLogger(), {n: logging.getLogger(n) for n in QUIET_LOGGERS}
    saved = root.handlers[:], root.level, PIPELINE.handlers[:], {n: q.level for n, q in quiet.items()}
    root.handlers, PIPELINE.handlers = [*handlers, screen], handlers[:]  # log() prints our lines itself
    root.setLevel(level)
    with warnings.catch_warnings():
        logging.captureWarnings(True)  # warnings go to the console handler and the file
        if not verbose():
            for message, category in HARMLESS_WARNINGS:
                warnings.filterwarnings("ignore", message, category)
            for q in quiet.values():
                q.setLevel(logging.WARNING)
        try:
            yield argv, path
        finally:
            logging.captureWarnings(False)
            for handler in handlers:
                handler.close()
            root.handlers, PIPELINE.handlers = saved[0], saved[2]
            root.setLevel(saved[1])
            for n, q in quiet.items():
                q.setLevel(saved[3][n])
            if saved_env is None:
                os.environ.pop("PIPELINE_VERBOSE", None)


def run_stage(main) -> None:
    """Sweep the scratch of killed runs, then run `main` on the command line's arguments (`-v`: verbose)
    with stage_console's console and log file; a user error or a full disk becomes one clear line and exit
    code 2. A failure names the log file; under DVC it also says how to get back what DVC removed before
    running the stage."""
    with stage_console(sys.argv[1:]) as (argv, log_file):
        if log_file:
            log(f"{stage_name()}: full log in {log_file}")
        try:
            sweep_scratch()
            main(argv)
        except Exception as e:
            PIPELINE.exception("failed")  # the traceback in the log file
            fail(e, log_file)


def fail(e: Exception, log_file: Path | None) -> None:
    """Re-raise `e` (a bug: its traceback) or print its one line and exit with code 2."""
    full = disk_full(e)
    if full is None and not isinstance(e, StageError):
        if hint := after_dvc_failure():
            e.add_note(hint)  # printed after the traceback
        if log_file:
            e.add_note(f"  full log: {log_file}")
        raise e
    if log_file:  # before the error line: that one stays the last
        log(f"{stage_name()}: failed; full log in {log_file}")
    print(f"error: {no_space(full) if full is not None else e}", file=sys.stderr)
    if hint := after_dvc_failure():
        print(hint, file=sys.stderr)
    sys.exit(2)


def stage_name() -> str:
    """The running stage: DVC's name for it, else its command line."""
    args = " ".join(sys.argv[1:])
    return os.environ.get("DVC_STAGE") or f"python -m stages.{Path(sys.argv[0]).stem}{' ' + args if args else ''}"


def no_space(error: OSError) -> str:
    """The one line for a full disk: the stage, the path it was writing, the bytes free there, what to do."""
    path = error.filename2 or error.filename  # a copy's destination, else the file or directory written
    where = Path(path or ".").absolute()
    while not where.exists():  # the half-written file or scratch is already removed
        where = where.parent
    return (f"{stage_name()}: no space left on device writing {path or 'in ' + os.getcwd()} "
            f"({shutil.disk_usage(where).free:,} bytes free on that file system). Free space there or move "
            "the workspace to a larger disk, then run the stage again: nothing half-written is kept, finished "
            "outputs stay, and an interrupted training resumes from its last checkpoint.")


def after_dvc_failure() -> str:
    """What a failed stage under `dvc repro` or `dvc exp run` (in the workspace) leaves, and how to get back
    the last good state ('' outside DVC, and for `dvc exp run --temp`/--queue: the workspace is untouched)."""
    stage, root = os.environ.get("DVC_STAGE"), os.environ.get("DVC_ROOT")
    if not stage or not root or Path(root).resolve() != Path.cwd().resolve():
        return ""
    hint = (f"  DVC removed this stage's earlier outputs before running it; `dvc checkout {stage}` brings back "
            "the last good ones (those of dvc.lock).")
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        hint += ("\n  `dvc exp run -S` wrote its values into params.yaml: `git checkout params.yaml` brings back "
                 "the committed ones.")
    return hint
