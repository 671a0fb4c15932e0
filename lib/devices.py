"""Where and how training runs: device, precision (bf16 autocast on CPUs with bf16 matmuls), the fairseq
flags for both, and data parallelism under torchrun."""
import os
import subprocess
import sys

from lib import hardware
from lib.errors import StageError, log

AUTO_CUDA_WORKERS = 8  # training.loader_workers auto on CUDA: at most this many per rank (loader_workers)


def training_device(training) -> str:
    """"cuda" or "cpu", as params.yaml's training.device asks and torch allows."""
    import torch
    if training.device == "cuda" and not torch.cuda.is_available():
        raise StageError("params.yaml: training.device is 'cuda' but torch sees no GPU "
                         f"(torch {torch.__version__}); use 'auto' or 'cpu', or install a CUDA build of torch")
    if training.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return training.device


def evaluation_device(device: str, cuda_available: bool | None = None) -> str:
    """Where evaluate scores the variants it does not time (evaluate.device): "cuda" or "cpu". `auto`: the GPU
    when there is one. The timed ones (the deployment formats) always run on the CPU, on evaluate.threads.
    `cuda_available`: injectable for tests (default: torch's answer)."""
    if cuda_available is None:
        import torch
        cuda_available = torch.cuda.is_available()
    if device == "cuda" and not cuda_available:
        raise StageError("params.yaml: evaluate.device is 'cuda' but torch sees no GPU; use 'auto' or 'cpu'")
    if device == "auto":
        return "cuda" if cuda_available else "cpu"
    return device


def device_name(device: str) -> str:
    """A device as evaluation rows record it: "cpu", or "cuda: <the GPU's name>"."""
    if device == "cpu":
        return "cpu"
    import torch
    return f"cuda: {torch.cuda.get_device_name()}"


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


def loader_workers(training, device: str, cores: int | None = None) -> int:
    """fairseq's --num-workers for a rank training on `device`: processes that build its batches beside it.
    A number in training.loader_workers is taken as is. `auto`: on a CPU none, since workers only compete with
    training for the same cores (and hold each run's exit for seconds); on CUDA the CPU cores a rank can spare
    (`cores`, default this machine's, shared by training.world_size ranks, one kept for the rank itself), at
    most AUTO_CUDA_WORKERS. Measured on one core (bench/loader.py, reports/loader.md), fairseq's masked-LM
    loader builds the paper batch (512 x 128 tokens) at a few batches/s, slower than a GPU trains."""
    if training.loader_workers != "auto":
        return training.loader_workers
    if device == "cpu":
        return 0
    spare = (cores or os.cpu_count() or 1) // training.world_size - 1
    return max(1, min(AUTO_CUDA_WORKERS, spare))


def device_flags(training) -> list:
    """fairseq flags for params.yaml's `training` section: device, precision, loader workers, and data
    parallelism when this process is one rank of a torchrun launch (see launch_data_parallel). On a CPU,
    --bf16 means autocast (train_with_budget): fp32 weights and optimizer, bfloat16 matmuls."""
    import torch
    device = training_device(training)
    cpu = device == "cpu"
    if cpu and training.threads:
        torch.set_num_threads(training.threads)
    # no --data-buffer-size thread: fairseq's daemon thread that reads batches ahead may be building one in C++
    # when the stage ends, and Python's shutdown then kills it with a forced unwind that C++ aborts on (exit 134
    # after every output was written; seen with the paper's 32k vocabulary). Workers, if any, prefetch instead
    flags = (["--cpu"] if cpu else []) + ["--num-workers", loader_workers(training, device), "--data-buffer-size", 0]
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
