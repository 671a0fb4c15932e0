"""The pipeline's stages, one module each: `python -m stages.<name>`.

DVC runs each stage command with the first `python` on PATH, which is not the project's when
`.venv/bin/dvc repro` runs without the venv activated. Before any stage imports its packages, a
`python` without them re-runs the command with the project's .venv interpreter, or, without one,
stops at once saying how to fix it (rather than failing stages later, at their first import)."""
import importlib.util
import os
import sys
from pathlib import Path

PROBES = ("yaml", "pydantic", "torch", "fairseq", "sentencepiece")  # packages of requirements.txt
VENV = Path(__file__).resolve().parents[1] / ".venv"                # where `make` installs them


def _ensure_project_interpreter() -> None:
    missing = [name for name in PROBES if importlib.util.find_spec(name) is None]
    if not missing:
        return
    if (VENV / "bin" / "python").exists() and Path(sys.prefix).resolve() != VENV.resolve():
        os.execv(VENV / "bin" / "python", [str(VENV / "bin" / "python"), *sys.orig_argv[1:]])
    sys.exit(f"error: {sys.executable} lacks {', '.join(missing)}: it is not the project's Python environment "
             "(DVC runs stage commands with the first `python` on PATH). Create the environment with `make repro` "
             "or `make .venv/.installed`, then `source .venv/bin/activate`, or activate the environment you "
             "installed requirements.txt into.")


_ensure_project_interpreter()
