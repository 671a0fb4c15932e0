"""The small library every stage shares: params loading, errors, logging, atomic outputs, checksums,
and running fairseq's command-line tools in-process."""
import argparse
import math
import contextlib
import csv
import fcntl
import hashlib
import importlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
import types
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from stages import hardware
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
    """Entry point of every stage: sweeps the scratch of killed runs, then runs `main`; user errors become
    one clear line and exit code 2."""
    try:
        sweep_scratch()
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
    interrupted stage never leaves a half-written output behind (a killed one leaves the scratch, which
    the next stage run removes: sweep_scratch)."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with writing_scratch(tmp):
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)


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
def writing_scratch(path: Path):
    """Lock the scratch file or directory `path` for the block: sweep_scratch leaves it alone. The kernel
    drops the lock when this process dies, kill -9 included."""
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    _scratch_locks.add(fd)
    try:
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


# ---------------------------------------------------------------- fairseq

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


# ---------------------------------------------------------------- budgeted fairseq training

WORK_DIR = Path("models/.work")   # resumable training state; not a DVC output (DVC deletes those)
CURVE_FIELDS = ["updates", "seconds", "tokens", "flops", "lr", "train_loss", "valid_loss", "valid_ppl",
                "valid_accuracy", "valid_bleu"]


def training_device(training) -> str:
    """"cuda" or "cpu", as params.yaml's training.device asks and torch allows."""
    import torch
    if training.device == "cuda" and not torch.cuda.is_available():
        raise StageError("params.yaml: training.device is 'cuda' but torch sees no GPU "
                         f"(torch {torch.__version__}); use 'auto' or 'cpu', or install a CUDA build of torch")
    if training.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return training.device


def training_precision(training, cpu_flags=None) -> str:
    """"fp16", "bf16" or "fp32", as params.yaml's training.precision asks. `auto`: on CUDA fp16 (the paper's
    mixed precision), on a CPU bf16 where it has bfloat16 matmul instructions (AVX-512 BF16 or AMX; a bf16
    matmul then runs ~2.8x an fp32 one on two threads), else fp32. `cpu_flags`: the CPU's ISA flags
    (default: this machine's), injectable for tests."""
    cpu = training_device(training) == "cpu"
    if training.precision == "auto":
        if not cpu:
            return "fp16"
        flags = hardware.isa_flags() if cpu_flags is None else cpu_flags
        return "bf16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "fp32"
    if cpu and training.precision == "fp16":
        raise StageError("params.yaml: training.precision fp16 trains on CUDA only (a CPU has no fast float16 "
                         "matmuls); on a CPU use auto, bf16 or fp32")
    return training.precision


def device_flags(training) -> list:
    """fairseq flags for params.yaml's `training` section: device, precision, and data parallelism when
    this process is one rank of a torchrun launch (see launch_data_parallel). On a CPU, --bf16 means
    autocast (train_with_budget): fp32 weights and optimizer, bfloat16 matmuls."""
    import torch
    cpu = training_device(training) == "cpu"
    if cpu and training.threads:
        torch.set_num_threads(training.threads)
    flags = ["--cpu"] if cpu else []
    flags += {"fp16": ["--fp16"], "bf16": ["--bf16"], "fp32": []}[training_precision(training)]
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:  # explicit: fairseq's default is every GPU it sees
        flags += ["--distributed-world-size", 1]
    else:
        # given explicitly, fairseq's own inference is skipped: it divides the rank by the GPU count
        # (zero on CPU) and would spawn workers of its own, which would not run this process's hooks
        flags += ["--distributed-init-method", "env://", "--distributed-world-size", world,
                  "--distributed-rank", os.environ["RANK"], "--distributed-no-spawn",
                  "--device-id", os.environ.get("LOCAL_RANK", 0),
                  # every rank reads the checkpoint itself: rank 0's broadcast unpickles with torch's
                  # weights-only loader, which refuses fairseq's config objects
                  "--load-checkpoint-on-all-dp-ranks"]
        if cpu:  # torch's DDP wants GPU modules for device ids; fairseq's own all-reduce does not
            flags += ["--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp"]
    return flags


def launch_data_parallel(training, module: str, argv: list) -> bool:
    """With training.world_size > 1, run `python -m <module> <argv>` as that many ranks under torchrun on
    this machine and return True once they all finished (this process then has nothing left to do).
    Returns False when there is nothing to launch: one process, or this process already is a rank (of
    this launch, or of a multi-node torchrun started by hand)."""
    launched = int(os.environ.get("WORLD_SIZE", 1))
    if launched > 1 and launched != training.world_size:
        raise StageError(f"params.yaml: training.world_size is {training.world_size} but torchrun started "
                         f"{launched} processes (WORLD_SIZE); make them agree")
    if training.world_size == 1 or launched > 1:
        return False
    import torch
    if training_device(training) == "cuda" and torch.cuda.device_count() < training.world_size:
        raise StageError(f"params.yaml: training.world_size is {training.world_size} but this machine has "
                         f"{torch.cuda.device_count()} GPUs; across machines, start torchrun on each (README)")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(training.world_size), "-m", module, *map(str, argv)]
    log(f"data-parallel training on {training.world_size} processes: {' '.join(command[1:])}")
    if subprocess.run(command, preexec_fn=_die_with_parent).returncode != 0:
        raise StageError(f"{module} {' '.join(map(str, argv))}: a data-parallel rank failed (its error is above)")
    return True


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the stage process dies, so that a `kill -9` of the
    stage never leaves ranks training behind (torchrun stops its ranks on SIGTERM). Linux only."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def distributed_rank() -> int:
    return int(os.environ.get("RANK", 0))


def budget_flags(budget) -> list:
    # fairseq counts training time restored from a checkpoint, so a resumed run keeps its budget
    if budget.updates is not None:
        return ["--max-update", budget.updates]
    return ["--stop-time-hours", budget.seconds / 3600]


def schedule_flags(opt) -> list:
    """Optimizer and schedule shared by every training stage. `linear`: warm-up, then linear decay to
    end_lr when the budget is spent, in updates or seconds (stages/schedule.py); `inverse_sqrt` needs no
    budget at all (fairseq's translation recipe)."""
    schedule = ["--lr-scheduler", "budget_linear", "--end-learning-rate", opt.end_lr] if opt.lr_schedule == "linear" \
        else ["--lr-scheduler", "inverse_sqrt", "--warmup-init-lr", "1e-07"]
    return ["--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--adam-eps", "1e-06", "--clip-norm", "0.0",
            "--lr", opt.lr, *schedule, "--warmup-updates", opt.warmup_updates, "--dropout", opt.dropout, "--attention-dropout", opt.dropout,
            "--weight-decay", opt.weight_decay, "--max-tokens", opt.max_tokens,
            "--validate-interval-updates", opt.validate_every, "--save-interval-updates", opt.validate_every,
            "--max-valid-steps", opt.valid_batches - 1,  # fairseq stops after index max_valid_steps
            "--validate-interval", 1_000_000, "--save-interval", 1_000_000,  # points on the update grid only
            "--keep-interval-updates", 1, "--no-epoch-checkpoints", "--log-format", "simple",
            # batches load in the training process: fairseq's worker processes would hold each run's exit
            # for seconds, and on a few cores they only compete with training for them
            "--num-workers", 0,
            "--log-interval", max(1, opt.validate_every // 2)]


def non_embedding_params(size, decoder: bool = False) -> int:
    """Weights of one Transformer stack, without embeddings (Kaplan et al.'s N)."""
    attention = (8 if decoder else 4) * size.hidden ** 2  # decoder: self- and cross-attention
    return size.layers * (attention + 2 * size.hidden * size.ffn)


def model_non_embedding_params(size, kind: str) -> int:
    """N of a whole model: "mlm" (a RoBERTa encoder) or "mt" (encoder plus decoder, each `layers` deep)."""
    if kind == "mt":
        return non_embedding_params(size) + non_embedding_params(size, decoder=True)
    return non_embedding_params(size)


def cpu_autocast(args: list) -> tuple[list, bool]:
    """fairseq's --bf16 casts the model itself to bfloat16 (weights, LayerNorm, softmax, checkpoint). On a
    CPU the harness runs each train step under torch.autocast instead: fp32 weights and optimizer,
    bfloat16 matmuls (validation scores in fp32). Returns the flags without --bf16 there, and whether to."""
    if "--cpu" in args and "--bf16" in args:
        return [a for a in args if a != "--bf16"], True
    return args, False


def run_fingerprint(args: list) -> str:
    """What identifies a training run, to tell whether an interrupted one may be resumed: its flags."""
    return json.dumps([str(a) for a in args if not str(a).startswith("--stop-time-hours")])


def train_with_budget(label: str, work: Path, args: list, curve_path: Path, flops_of_sample,
                      on_model=None) -> dict:
    """Run fairseq-train with `args` (which include the budget) in `work`, resuming from its last
    checkpoint when an earlier run of the same configuration was interrupted. Writes the learning
    curve to `curve_path` (one row per validation point) and returns the last row.

    flops_of_sample(sample) -> (tokens, flops) estimates the training cost of one batch;
    on_model(model), when given, is called once with the built model before its first update."""
    import torch
    from fairseq import trainer as fairseq_trainer
    import fairseq_cli.train as train_cli
    from stages import schedule  # registers --lr-scheduler budget_linear

    work_curve, master = work / "curve.csv", distributed_rank() == 0
    rows = []
    if master:  # the other ranks wait for it in fairseq's process-group set-up
        fingerprint = run_fingerprint(args)
        fingerprint_file = work / "fingerprint.json"
        if work.exists() and (not fingerprint_file.exists() or fingerprint_file.read_text() != fingerprint):
            log(f"{label}: configuration changed since the interrupted run in {work}; starting over")
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        fingerprint_file.write_text(fingerprint)
        repair_checkpoints(work, label)
        rows = resume_curve(work_curve, work / "checkpoint_last.pt")
    if rows:
        log(f"{label}: resuming at update {rows[-1]['updates']} ({float(rows[-1]['seconds']):.0f} s spent)")
    # tokens and FLOPs: totals on the curve, plus what this rank trained on since the last point
    state = {"tokens": int(rows[-1]["tokens"]) if rows else 0, "flops": float(rows[-1]["flops"]) if rows else 0.0,
             "new_tokens": 0, "new_flops": 0.0, "loss_sum": 0.0, "loss_n": 0}
    args, cpu_bf16 = cpu_autocast(args)

    def train_step(self, samples, raise_oom=False):
        if not state.get("started"):  # this process's first update
            state["started"] = True
            if self.get_num_updates() > 0:
                # resumed: fairseq's clock has run since it loaded the checkpoint, but this process's
                # start-up is not training (the killed run counted its own), and a late kill would
                # spend the rest of the budget on it before the first update could check the budget
                self._start_time = time.time()
            if isinstance(self.lr_scheduler, schedule.BudgetLinearSchedule):
                # the budget's clock: training seconds, restored from the checkpoint when resumed
                self.lr_scheduler.elapsed = lambda: float(self.cumulative_training_time())
            if on_model is not None:
                on_model(self.get_model())
        try:  # raise_oom: a batch that does not fit fails the run instead of being skipped silently
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16):
                out = original_train_step(self, samples, raise_oom=True)
        except Exception as e:
            cause = in_context_chain(e, FloatingPointError)
            if cause is not None and cause is not e:  # fairseq's NaN diagnostics can crash themselves
                raise cause from e
            raise
        for sample in samples:
            if sample and "net_input" in sample:
                tokens, flops = flops_of_sample(sample)
                state["new_tokens"] += tokens
                state["new_flops"] += flops
        if out and "loss" in out:
            state["loss_sum"] += float(out["loss"])
            state["loss_n"] += 1
        return out

    def get_valid_stats(cfg, trainer, stats, tracking_best):
        stats = original_valid_stats(cfg, trainer, stats, tracking_best)
        if not tracking_best:  # the first valid subset only, once per point
            return stats
        new = [state["new_tokens"], state["new_flops"]]
        if trainer.data_parallel_world_size > 1:  # every rank validates: sum what all ranks trained on
            new = torch.tensor(new, dtype=torch.float64)
            torch.distributed.all_reduce(new)
            new = [int(new[0]), float(new[1])]
        state["tokens"] += new[0]
        state["flops"] += new[1]
        state["new_tokens"], state["new_flops"] = 0, 0.0
        if distributed_master(cfg):
            seconds = float(trainer.cumulative_training_time())  # a tensor when there are several ranks
            row = {"updates": trainer.get_num_updates(), "seconds": round(seconds, 2),
                   "tokens": state["tokens"], "flops": f"{state['flops']:.4g}", "lr": f"{trainer.get_lr():.4g}",
                   "train_loss": round(state["loss_sum"] / state["loss_n"], 4) if state["loss_n"] else "",
                   "valid_loss": stats.get("loss", ""), "valid_ppl": stats.get("ppl", ""),
                   "valid_accuracy": stats.get("accuracy", ""),
                   # fairseq logs no BLEU while every hypothesis is empty: that is a BLEU of 0
                   "valid_bleu": stats.get("bleu", 0.0 if getattr(cfg.task, "eval_bleu", False) else "")}
            state["loss_sum"], state["loss_n"] = 0.0, 0
            rows.append(row)
            write_curve(work_curve, rows)
            log(f"{label}: update {row['updates']}, {row['seconds']:.0f} s, valid loss {row['valid_loss']}")
        if not math.isfinite(float(stats.get("loss") or 0)):  # on every rank: the stats are all-reduced
            raise FloatingPointError(f"validation loss is {stats.get('loss')}")
        return stats

    def parse_args_and_arch(*args, **kwargs):
        parsed = original_parse(*args, **kwargs)
        parsed.tpu = False  # fairseq's --bf16 implies --tpu (torch_xla); here it means a GPU's bfloat16
        return parsed

    original_train_step = fairseq_trainer.Trainer.train_step
    original_valid_stats = train_cli.get_valid_stats
    original_parse = train_cli.options.parse_args_and_arch
    fairseq_trainer.Trainer.train_step = train_step
    train_cli.get_valid_stats = get_valid_stats
    train_cli.options.parse_args_and_arch = parse_args_and_arch
    # fairseq keeps the best validation score on a function attribute, for the whole process: a second
    # run in one process (tests) would compare against the first run's best (a resumed run restores its own)
    from fairseq import checkpoint_utils
    if hasattr(checkpoint_utils.save_checkpoint, "best"):
        del checkpoint_utils.save_checkpoint.best
    try:
        run_fairseq("train", [*args, "--save-dir", work])
    except FloatingPointError as e:
        done = rows[-1]["updates"] if rows else 0
        raise StageError(f"{label}: loss became NaN/inf after update {done} ({e}). The last good checkpoint is "
                         f"kept in {work}/checkpoint_last.pt; lower the learning rate or use fp32/bf16.")
    except (RuntimeError, MemoryError) as e:
        if not isinstance(e, (torch.OutOfMemoryError, MemoryError)) and not any(
                m in str(e) for m in ("out of memory", "can't allocate memory")):
            raise
        raise StageError(f"{label}: does not fit in memory ({str(e).splitlines()[0]}). "
                         "Lower max_tokens (the batch size in tokens) for this stage in params.yaml.")
    finally:
        fairseq_trainer.Trainer.train_step = original_train_step
        train_cli.get_valid_stats = original_valid_stats
        train_cli.options.parse_args_and_arch = original_parse
    if not master:
        return {}
    if not rows:
        raise StageError(f"{label}: training ended before its first validation point; raise the budget")
    curve_path.parent.mkdir(parents=True, exist_ok=True)
    write_curve(curve_path, rows)
    return rows[-1]


def in_context_chain(error: BaseException, kind: type):
    """`error` or the first exception it was raised while handling, that is a `kind`."""
    while error is not None and not isinstance(error, kind):
        error = error.__context__
    return error


def size_arg(argv, sizes: list, key: str, usage: str) -> str:
    """The single SIZE argument of a training stage, one of the sizes params.yaml's `key` selects."""
    if len(argv) != 1 or argv[0] not in sizes:
        raise StageError(f"usage: {usage}, SIZE one of {key} {sizes}")
    return argv[0]


def train_and_export(stage: str, name: str, out: Path, args: list, flops_of_sample, keep: str,
                     summary: dict) -> dict:
    """What every training stage does: train `name` under its budget (resumable, in
    models/.work/<stage>/<name>), write its curve to reports/curves/<stage>-<name>.csv, export
    checkpoint_<keep>.pt (last or best) to out/checkpoint.pt with out/summary.json, drop the scratch."""
    label, work = f"{stage} {name}", WORK_DIR / stage / name
    last = train_with_budget(label, work, args, Path("reports/curves") / f"{stage}-{name}.csv", flops_of_sample)
    if distributed_rank() != 0:  # rank 0 writes the outputs
        return last
    parameters = export_checkpoint(work / f"checkpoint_{keep}.pt", out / "checkpoint.pt")
    write_json(out / "summary.json", {**summary, "parameters": parameters, "final": last,
                                      "precision": trained_precision(args), "hardware": trained_on(args)})
    shutil.rmtree(work)
    log(f"{label}: done, {last['updates']} updates in {last['seconds']} s")
    return last


def trained_precision(args: list) -> str:
    return "bf16" if "--bf16" in args else "fp16" if "--fp16" in args else "fp32"


def trained_on(args: list) -> str:
    """The processor a run trained on, as evaluation rows name it."""
    if "--cpu" in args:
        return hardware.cpu()
    import torch
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cuda"


def distributed_master(cfg) -> bool:
    return getattr(cfg.distributed_training, "distributed_rank", 0) == 0


def write_curve(path: Path, rows: list) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, CURVE_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def resume_curve(curve: Path, checkpoint: Path) -> list:
    """Curve rows of an interrupted run, cut back to its last checkpoint (rows after it are redone)."""
    if not (curve.exists() and checkpoint.exists()):
        return []
    updates = checkpoint_updates(checkpoint)
    with open(curve) as f:
        return [row for row in csv.DictReader(f) if int(row["updates"]) <= updates]


def repair_checkpoints(work: Path, label: str) -> None:
    """fairseq writes checkpoint_<epoch>_<updates>.pt atomically, then copies it to checkpoint_best.pt
    and checkpoint_last.pt, not atomically: a kill during a copy leaves a truncated file. Replace a
    truncated last with the newest intact interval checkpoint; drop a truncated best (fairseq writes
    it again at the next improvement over the best score recorded in last)."""
    def readable(path):
        try:
            load_checkpoint(path, mmap=True)
            return True
        except UnsafeCheckpoint:  # not truncated: neither resumed from nor dropped silently
            raise
        except Exception:
            return False

    last, best = work / "checkpoint_last.pt", work / "checkpoint_best.pt"
    if last.exists() and not readable(last):
        intervals = sorted(work.glob("checkpoint_*_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[1]), reverse=True)
        intact = next((p for p in intervals if readable(p)), None)
        if intact is None:
            log(f"{label}: {last} is truncated and no intact checkpoint is left; starting over")
            last.unlink()
        else:
            log(f"{label}: {last} is truncated (killed while copying); resuming from {intact.name}")
            shutil.copy(intact, last.with_suffix(".tmp"))
            os.replace(last.with_suffix(".tmp"), last)
    if best.exists() and not readable(best):
        log(f"{label}: dropping truncated {best}")
        best.unlink()


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
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dest)
    return sum(t.numel() for t in state["model"].values())
