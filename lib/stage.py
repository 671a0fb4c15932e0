"""The entry point every stage runs through."""
import os
import shutil
import sys
from pathlib import Path

from lib.errors import StageError, disk_full
from lib.files import sweep_scratch


def run_stage(main) -> None:
    """Sweep the scratch of killed runs, then run `main` on the command line's arguments; a user error or a
    full disk becomes one clear line and exit code 2. Under DVC, a failure also says how to get back what
    DVC removed before running the stage."""
    try:
        sweep_scratch()
        main(sys.argv[1:])
    except Exception as e:
        full = disk_full(e)
        if full is None and not isinstance(e, StageError):
            if hint := after_dvc_failure():
                e.add_note(hint)  # printed after the traceback
            raise
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
