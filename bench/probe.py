"""python -m bench.probe OUT STAGE ARG...: run `python -m stages.STAGE ARG...` unchanged, and write to OUT
(JSON) when its first fairseq update started and its last ended, and the seconds spent inside updates
(Trainer.train_step: forward, backward, optimizer step), validation and checkpoint saving, in
time.time() so that the parent, which times the whole process, can place them on its own clock."""
import importlib
import json
import sys
import time
from pathlib import Path


def main(out: str, stage: str, *argv):
    import fairseq_cli.train  # the stage imports these anyway, a little later
    from fairseq import checkpoint_utils, trainer
    spent = {"first_start": None, "last_end": None, "train_steps_s": 0.0, "updates": 0, "validation_s": 0.0,
             "checkpoint_s": 0.0}

    def timed(owner, name, key):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            started = time.time()
            try:
                return original(*args, **kwargs)
            finally:
                spent[key] += time.time() - started
                if key == "train_steps_s":
                    spent["first_start"] = spent["first_start"] or started
                    spent["last_end"] = time.time()
                    spent["updates"] += 1
        setattr(owner, name, wrapper)

    timed(trainer.Trainer, "train_step", "train_steps_s")
    timed(fairseq_cli.train, "validate", "validation_s")  # looked up in the module at each call
    timed(checkpoint_utils, "save_checkpoint", "checkpoint_s")
    try:
        importlib.import_module(f"stages.{stage}").main(list(argv))
    finally:
        Path(out).write_text(json.dumps(spent))


if __name__ == "__main__":
    main(*sys.argv[1:])
