"""The entry point every stage runs through."""
import sys

from lib.errors import StageError
from lib.files import sweep_scratch


def run_stage(main) -> None:
    """Sweep the scratch of killed runs, then run `main` on the command line's arguments; a user error
    becomes one clear line and exit code 2."""
    try:
        sweep_scratch()
        main(sys.argv[1:])
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
