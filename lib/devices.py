"""Where and how training runs: device, precision (bf16 autocast on CPUs with bf16 matmuls), the fairseq
flags for both, and data parallelism under torchrun."""
import os
import subprocess
import sys

from lib import hardware
from lib.errors import StageError, log


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


def cpu_autocast(args: list) -> tuple[list, bool]:
    """fairseq's --bf16 casts the model itself to bfloat16 (weights, LayerNorm, softmax, checkpoint). On a
    CPU the harness runs each train step under torch.autocast instead: fp32 weights and optimizer,
    bfloat16 matmuls (validation scores in fp32). Returns the flags without --bf16 there, and whether to."""
    if "--cpu" in args and "--bf16" in args:
        return [a for a in args if a != "--bf16"], True
    return args, False


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
                         f"{torch.cuda.device_count()} GPUs; across machines, start torchrun on each (docs/gpus-and-slurm.md)")
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


def distributed_master(cfg) -> bool:
    return getattr(cfg.distributed_training, "distributed_rank", 0) == 0


def trained_precision(args: list) -> str:
    return "bf16" if "--bf16" in args else "fp16" if "--fp16" in args else "fp32"


def trained_on(args: list) -> str:
    """The processor a run trained on, as evaluation rows name it."""
    if "--cpu" in args:
        return hardware.cpu()
    import torch
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cuda"
