"""validate: check params.yaml and datasets.yaml against their schema (lib/schema.py, lib/catalog.py), ahead
of every other stage.

The fetch stages depend on its output, so `dvc repro` and `dvc exp run -S ...`, whatever stages they
target, run it first whenever params.yaml changed: a bad value fails at once, even when every other stage
is cached and would not run. Its output never changes, so a valid change reruns nothing through it.

Writes data/params.ok.

Usage: python -m stages.validate
"""
import os
from pathlib import Path

from lib.errors import StageError
from lib.params import load_params
from lib.stage import run_stage

OUT = Path("data/params.ok")
NEW_STAGES = ("  DVC's \"No file hash info found for '...'. It won't be created.\" warnings before this stage name "
              "outputs of stages that have never run (those of the new values); they are not the error.")


def main(argv):
    if argv:
        raise StageError("usage: python -m stages.validate")
    try:
        load_params()
    except StageError as e:
        if os.environ.get("DVC_EXP_BASELINE_REV"):  # under `dvc exp run`, whose checkout warned first
            raise StageError(f"{e}\n{NEW_STAGES}") from None
        raise
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("params.yaml is valid\n")


if __name__ == "__main__":
    run_stage(main)
