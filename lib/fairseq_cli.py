"""fairseq's command-line tools (fairseq-preprocess, fairseq-train, ...) run in this process."""
import importlib
import os
import sys
from pathlib import Path

from lib.checkpoints import weights_only_load
from lib.errors import StageError


def run_fairseq(tool: str, args: list) -> None:
    """Run `fairseq-<tool>` (preprocess, train, ...) in this process with the given CLI args.

    fairseq calls torch.load without weights_only, which TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 turns into
    a full unpickler that runs whatever a checkpoint's pickle calls: while fairseq runs, torch.load is
    weights_only_load (--finetune-from-model, resuming from checkpoint_last.pt, rank 0's broadcast)."""
    import torch
    module = importlib.import_module(f"fairseq_cli.{tool}")
    saved_argv, saved_load = sys.argv, torch.load
    sys.argv = [f"fairseq-{tool}", *map(str, args)]
    torch.load = weights_only_load
    try:
        module.cli_main()
    except SystemExit as e:  # fairseq's argparse exits on bad flags
        if e.code not in (0, None):
            raise StageError(f"fairseq-{tool} failed (exit {e.code}); args: {' '.join(sys.argv[1:])}")
    finally:
        sys.argv, torch.load = saved_argv, saved_load


def fairseq_preprocess(destdir: Path, args: list) -> None:
    """fairseq-preprocess into `destdir`. Its preprocess.log names temporary paths, so it is removed:
    outputs must be byte-identical across runs for DVC's cache to hold downstream."""
    run_fairseq("preprocess", [*args, "--destdir", destdir, "--workers", os.cpu_count() or 1])
    (Path(destdir) / "preprocess.log").unlink(missing_ok=True)
