"""The small library every stage shares: params loading, errors, logging, atomic outputs, checksums,
and running fairseq's command-line tools in-process."""
import argparse
import contextlib
import hashlib
import importlib
import json
import os
import shutil
import sys
import time
import types
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from stages.schema import Params

PARAMS_FILE = Path("params.yaml")


class StageError(Exception):
    """An error the user can act on; printed without a traceback."""


class DataError(StageError):
    """Bad input data, located by file and (when known) line."""

    def __init__(self, path, message, line=None):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_stage(main) -> None:
    """Entry point of every stage: user errors become one clear line and exit code 2."""
    try:
        main(sys.argv[1:])
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


# ---------------------------------------------------------------- params

def load_params(path: Path = PARAMS_FILE) -> Params:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise StageError(f"{path}: not found (run from the repository root)")
    except yaml.YAMLError as e:
        raise StageError(f"{path}: not valid YAML: {e}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                allowed = _allowed_keys(err["loc"][:-1])
                msg = f"unknown key; accepted keys here: {allowed}" if allowed else "unknown key"
            elif err["type"] == "missing":
                msg = "missing key"
            lines.append(f"  {key}: {msg}")
        raise StageError(f"{path}: invalid parameters\n" + "\n".join(lines))


def _allowed_keys(loc) -> list[str] | None:
    """Field names of the model found by following `loc` through the schema (for error messages)."""
    cls = Params
    for part in loc:
        if isinstance(cls, type) and issubclass(cls, BaseModel):
            field = cls.model_fields.get(str(part))
            if field is None:
                return None
            cls = field.annotation
        else:  # a dict/list container: step into its value type
            args = typing.get_args(cls)
            cls = args[-1] if args else None
        while typing.get_origin(cls) in (typing.Union, types.UnionType):  # Optional[X] -> X
            cls = next(a for a in typing.get_args(cls) if a is not type(None))
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return sorted(cls.model_fields)
    return None


def dataset_arg(argv, params, usage: str, kind: str | None = None):
    """The single DATASET argument of a stage, checked against params.yaml's catalog (and kind)."""
    if len(argv) != 1:
        raise StageError(f"usage: {usage}")
    known = sorted(k for k, d in params.datasets.items() if kind in (None, d.kind))
    if argv[0] not in known:
        raise StageError(f"params.yaml: datasets.{argv[0]}: no such {kind + ' ' if kind else ''}dataset; known: {known}")
    return argv[0], params.datasets[argv[0]]


# ---------------------------------------------------------------- files

def sha256sum(path: Path) -> str:
    return file_digest(path, "sha256")


def file_digest(path: Path, algorithm: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a scratch directory that replaces `final` only if the block succeeds, so a failed or
    interrupted stage never leaves a half-written output behind."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def write_json(path: Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------- fairseq

def run_fairseq(tool: str, args: list) -> None:
    """Run `fairseq-<tool>` (preprocess, train, ...) in this process with the given CLI args.

    torch >= 2.6 unpickles checkpoints with weights_only=True, which refuses the argparse.Namespace
    fairseq stores in them; allowlist exactly that class rather than turning the safe loader off."""
    import torch
    torch.serialization.add_safe_globals([argparse.Namespace])
    module = importlib.import_module(f"fairseq_cli.{tool}")
    saved_argv = sys.argv
    sys.argv = [f"fairseq-{tool}", *map(str, args)]
    try:
        module.cli_main()
    except SystemExit as e:  # fairseq's argparse exits on bad flags
        if e.code not in (0, None):
            raise StageError(f"fairseq-{tool} failed (exit {e.code}); args: {' '.join(sys.argv[1:])}")
    finally:
        sys.argv = saved_argv


# ---------------------------------------------------------------- text preparation

CAP_SEED = 1  # fixed: a capped subset is the same on every machine and every run


def cap(rows: list, limit: int | None) -> list:
    """A seeded random subset of at most `limit` rows, in their original order (None: all rows)."""
    if limit is None or len(rows) <= limit:
        return rows
    import random
    keep = sorted(random.Random(CAP_SEED).sample(range(len(rows)), limit))
    return [rows[i] for i in keep]


def train_sentencepiece(lines: list[str], prefix: Path, vocab_size: int, model_type: str):
    """Train a sentencepiece model on `lines`; returns the loaded processor."""
    import sentencepiece as spm
    spm.set_random_generator_seed(CAP_SEED)
    log(f"sentencepiece: training {model_type} vocab {vocab_size} on {len(lines)} lines")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(prefix), vocab_size=vocab_size,
        model_type=model_type, character_coverage=1.0, input_sentence_size=2_000_000,
        shuffle_input_sentence=True, max_sentence_length=1 << 16, num_threads=os.cpu_count(),
        hard_vocab_limit=False,  # small corpora (tests, caps) may not support the full vocab size
        minloglevel=2)
    return spm.SentencePieceProcessor(model_file=f"{prefix}.model")


def write_fairseq_dict(sp, path: Path) -> Path:
    """fairseq's dictionary for a sentencepiece model: every piece it can emit, so no piece unseen in
    the training text (say a GLUE word absent from the corpus) becomes <unk>. fairseq adds its own
    <s>, <pad>, </s>, <unk>, so sentencepiece's control and unknown pieces are left out."""
    with open(path, "w") as f:
        for i in range(sp.get_piece_size()):
            if not (sp.is_control(i) or sp.is_unknown(i)):
                f.write(f"{sp.id_to_piece(i)} 1\n")
    return path


def encode_pieces(sp, lines: list[str], path: Path) -> int:
    """Write `lines` as space-separated sentencepiece pieces, the input fairseq-preprocess expects.
    Returns the number of pieces."""
    n = 0
    with open(path, "w") as f:
        for pieces in sp.encode(lines, out_type=str):
            f.write(" ".join(pieces) + "\n")
            n += len(pieces)
    return n


def read_lines(path: Path) -> list[str]:
    with open(path) as f:
        return [line.rstrip("\n") for line in f]


def fairseq_preprocess(destdir: Path, args: list) -> None:
    """fairseq-preprocess into `destdir`. Its preprocess.log names temporary paths, so it is removed:
    outputs must be byte-identical across runs for DVC's cache to hold downstream."""
    run_fairseq("preprocess", [*args, "--destdir", destdir, "--workers", os.cpu_count() or 1])
    (Path(destdir) / "preprocess.log").unlink(missing_ok=True)
