"""fairseq checkpoints: loaded with torch's weights-only unpickler and an allowlist of what fairseq stores,
whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says; exported with the model only, and holding only what torch's
default loader accepts, so fairseq's own tools (fairseq-generate, RobertaModel.from_pretrained) open them."""
import argparse
import os
import pickle
import re
from pathlib import Path

from lib.errors import DataError
from lib.files import naming_disk_full


def checkpoint_options(checkpoint: dict) -> tuple[dict, dict, str, str]:
    """A fairseq checkpoint's model options, task options, architecture and task name, as dicts whether
    fairseq stored an argparse Namespace (older checkpoints) or an omegaconf DictConfig."""
    def options(section) -> dict:
        return vars(section) if isinstance(section, argparse.Namespace) else dict(section or {})
    cfg = checkpoint.get("cfg") or {}
    opts, task = options(cfg.get("model")), options(cfg.get("task"))
    return opts, task, opts.get("arch", opts.get("_name")), task.get("_name")


def checkpoint_updates(checkpoint: Path) -> int:
    state = load_checkpoint(checkpoint, mmap=True)
    return state["optimizer_history"][-1]["num_updates"]


def allow_checkpoint_globals() -> None:
    """The non-tensor globals in fairseq checkpoints, for torch's weights-only loader: the argparse
    Namespace of old-style configs, and numpy arrays (fairseq saves metric state such as BLEU counts)."""
    import numpy as np
    import torch
    torch.serialization.add_safe_globals([
        argparse.Namespace, np._core.multiarray._reconstruct, np.ndarray, np.dtype,
        *(type(np.dtype(t)) for t in (np.int64, np.int32, np.float64, np.float32, np.bool_))])


class UnsafeCheckpoint(DataError):
    """A checkpoint that holds more than tensors and the types of fairseq checkpoints: unpickling it could
    run arbitrary code."""


def weights_only_load(f, map_location=None, *, weights_only=None, **kwargs):
    """torch.load with torch's weights-only unpickler and allow_checkpoint_globals' allowlist, whatever
    the caller asks and whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says (torch lets that variable override
    only a load that leaves weights_only unset). A refused file is an UnsafeCheckpoint that names it and
    what it holds, not torch's advice to load it unsafely."""
    import torch
    allow_checkpoint_globals()
    try:  # torch.serialization.load, not torch.load: run_fairseq points torch.load here
        return torch.serialization.load(f, map_location, weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        reason = str(e.__context__ or e)  # the unpickler's own words, before torch wraps them in its advice
        found = re.search(r"GLOBAL (\S+)", reason)
        what = f"its pickle calls or builds {found.group(1)}" if found else reason.split(". ")[0]
        # fairseq passes an open file, and its broadcast between ranks a buffer
        name = f if isinstance(f, (str, os.PathLike)) else getattr(f, "name", "a checkpoint sent by another rank")
        raise UnsafeCheckpoint(name, f"refused to load: {what}, which is neither a tensor nor part of a fairseq "
                               "checkpoint, so loading it could run arbitrary code. Replace it with a checkpoint "
                               "this pipeline wrote (run the stage that writes it again).") from None


def load_checkpoint(path: Path, mmap: bool = False) -> dict:
    """A fairseq checkpoint (or any file of tensors), loaded on the CPU by weights_only_load."""
    return weights_only_load(path, map_location="cpu", mmap=mmap)


def export_checkpoint(source: Path, dest: Path) -> int:
    """Copy a fairseq checkpoint with the model only: no optimizer state, and no training-run state
    (fairseq would restore its elapsed training time into a fine-tuning run, spending that run's
    budget before it starts), and fp32 weights (an fp16/bf16 run keeps its model in that precision;
    pruning, conversion and CPU evaluation work in fp32). Returns the parameter count."""
    import torch
    state = load_checkpoint(source)
    for key, tensor in state["model"].items():
        if tensor.is_floating_point():
            state["model"][key] = tensor.float()  # the same tensor when it already is fp32
    state["last_optimizer_state"] = None
    for key in ("previous_training_time", "metrics"):
        state["extra_state"].pop(key, None)
    state["cfg"] = plain_config(state["cfg"])
    dest.parent.mkdir(parents=True, exist_ok=True)
    # through a Python file: a full disk raises OSError(ENOSPC), which names `dest` (lib.stage's one line);
    # torch.save to a path raises a bare RuntimeError
    with naming_disk_full(dest), open(dest, "wb") as f:
        torch.save(state, f)
    return sum(t.numel() for t in state["model"].values())


def plain_config(value):
    """A fairseq config with only dicts, lists, numbers, strings and None, which torch's default (weights-only)
    loader accepts: fairseq stores the model's options as an argparse Namespace (cfg["model"]), which that
    loader refuses, so fairseq's own tools (they call torch.load as it is) could not open the checkpoint.
    fairseq builds the model from the dict of its attributes as from the Namespace."""
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, dict):
        return {key: plain_config(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_config(v) for v in value)
    return value
