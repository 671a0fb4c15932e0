"""python -m bench.gpu_check [--dry-run] [--out reports/gpu-check.json]: the pipeline's CUDA path checked
in one go on a machine with a GPU, in about 8 minutes (GPU time comes in short slots):

1. the GPU, driver, torch / CUDA / cuDNN / NCCL versions, and the measured bf16 and fp16 matmul peaks;
2. a tiny `dvc repro` of the default pipeline at its first sizes, through pretrain, finetune, train_mt,
   compress (with a few seconds of recovery training, on the GPU too) and evaluate (every fairseq variant
   scored on the GPU, evaluate.device auto, the ONNX models on the CPU: checked per row), on CUDA in fp16 and in
   bf16: two projects, run at the same time, on the tests' synthetic mirror (nothing to download). Every
   learning curve's validation loss must fall, every checkpoint must load on CPU, be fp32 and finite, and
   say that it trained on CUDA in that precision;
3. `python -m bench --only training` for three sizes of the paper grid at the paper's batch (65536 tokens):
   tokens/s, MFU against the measured matmul peak, peak GPU memory; then `python -m bench.loader`: the
   masked-LM and translation loaders' batches/s at the paper's batch shapes with 0, 1 and the `auto` number
   of loader workers on this machine's cores, against the step rates just measured;
4. everything to reports/gpu-check.json and a markdown table beside it (reports/gpu-check.md), with each
   step's log (gpu-check-<step>.log); exit status 1 when any check failed.

--dry-run does every step on CPU instead (the tests' tiny sizes, update budgets, fp32, no matmul peak); the
test suite runs it. NCCL data parallelism needs two GPUs and is not part of the check.
What to install on a GPU machine first: bench/gpu_wheels.sh.
"""
import argparse
import csv
import datetime
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import make_tiny_project, set_params, tiny_training  # noqa: E402  the tests' tiny mirror and sizes

from bench import report  # noqa: E402

TARGETS = ["evaluate_glue", "evaluate_mt"]  # and every stage they depend on
BENCH_SIZES = ["L6-H256", "L12-H768", "L6-H1536"]  # the paper grid's narrowest, base and widest; ~2 minutes
MODES = {  # what differs between the check on a GPU and its dry run on CPU
    "gpu": {"runs": ["fp16", "bf16"], "bench_sizes": BENCH_SIZES, "bench_flags": [], "loader_batches": 40,
            "loader_seconds": 3,
            # the tiny corpus 80 times: ~20 batches of 65536 tokens, so the timed updates are not all epoch starts
            # the pipelines are stopped at 5 minutes, the benchmark when the whole check reaches 8
            "corpus_copies": 80, "pipeline_timeout_s": 300, "total_s": 480, "bench_alone": True},
    "dry-run": {"runs": ["cpu"], "bench_sizes": ["T1", "T2"], "bench_flags": ["--quick"], "loader_batches": 3,
                "loader_seconds": 0,
                "corpus_copies": 1, "pipeline_timeout_s": 300, "total_s": 480, "bench_alone": False},
}


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every step on CPU, at the tests' tiny sizes")
    parser.add_argument("--out", type=Path, default=REPO / "reports/gpu-check.json",
                        help="the markdown and the logs go beside it")
    parser.add_argument("--work", type=Path, help="where the tiny projects are built (default: a temporary "
                        "directory, removed at the end)")
    parser.add_argument("--bench-sizes", nargs="+", metavar="SIZE", help="paper-grid sizes to benchmark "
                        f"(default: {' '.join(BENCH_SIZES)})")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    mode = MODES["dry-run" if args.dry_run else "gpu"]
    started = time.time()
    results = {"command": " ".join(["python -m bench.gpu_check", *(sys.argv[1:] if argv is None else argv)]),
               "mode": "dry-run" if args.dry_run else "gpu",
               "started": datetime.datetime.now().isoformat(timespec="seconds")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results["environment"] = environment(args.dry_run)
    print(json.dumps(results["environment"], indent=2), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        env = child_env(work)
        # the pipelines run in the background (at once: they are light on a GPU), the benchmark's data beside them
        jobs = {run: start(pipeline_project(work / run, run), TARGETS, env, log_path(args.out, run))
                for run in mode["runs"]}
        bench_project = benchmark_project(work / "bench", args.dry_run, mode["corpus_copies"])
        data = finish(start(bench_project, ["prepare_mlm", "prepare_mt"], env, log_path(args.out, "bench-data")),
                      mode["pipeline_timeout_s"])
        # on a GPU the benchmark runs alone once the pipelines are done; a dry run times nothing, so it runs beside them
        done = {run: finish(job, mode["pipeline_timeout_s"]) for run, job in jobs.items()} if mode["bench_alone"] else {}
        sizes = args.bench_sizes or mode["bench_sizes"]
        left = max(60.0, started + mode["total_s"] - 10 - time.time())  # 10 s to inspect and write
        results["benchmark"] = benchmark(bench_project, sizes, mode["bench_flags"], left, env,
                                         log_path(args.out, "bench")) if data["ok"] else {**data, "sizes": sizes}
        results["loader"] = loaders(bench_project, mode["loader_batches"], mode["loader_seconds"], env,
                                    log_path(args.out, "loader")) if data["ok"] else data
        done = done or {run: finish(job, mode["pipeline_timeout_s"]) for run, job in jobs.items()}
        results["pipeline"] = {run: {**done[run], **inspect(work / run / "project", run)} for run in mode["runs"]}
    results["failures"] = failures(results)
    results["ok"] = not results["failures"]
    results["duration_s"] = round(time.time() - started, 1)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results), flush=True)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')} in {results['duration_s']:.0f} s", flush=True)
    return results


# ---------------------------------------------------------------- 1. the machine

def environment(dry_run: bool) -> dict:
    import torch
    from bench.__main__ import versions
    from bench.training import matmul_peak
    found = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
             "cudnn": torch.backends.cudnn.version(), "cuda_available": torch.cuda.is_available(),
             "packages": versions(), "cpu_cores": os.cpu_count()}
    if dry_run:
        return {**found, "gpu": None, "note": "dry run: CPU only, no matmul peak"}
    if not torch.cuda.is_available():
        raise SystemExit(f"error: torch {torch.__version__} sees no GPU; use --dry-run to check on CPU")
    props = torch.cuda.get_device_properties(0)
    found.update(gpu=props.name, gpus=torch.cuda.device_count(), gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                 compute_capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                 driver=nvidia_smi("driver_version"), nccl=str(torch.cuda.nccl.version()),  # a tuple, or an int
                 bf16_supported=torch.cuda.is_bf16_supported(),
                 matmul_peak_tflops={p: round(matmul_peak(p) / 1e12, 1) for p in ("bf16", "fp16")})
    return found


def nvidia_smi(field: str):
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout else None
    except (OSError, subprocess.TimeoutExpired):
        return None


# ---------------------------------------------------------------- 2. the tiny pipelines

def pipeline_project(root: Path, run: str) -> Path:
    """A tiny project (the tests' mirror and params.yaml) at the default pipeline's first sizes: on CUDA in
    precision `run` with budgets of seconds, or ("cpu") the tests' tiny sizes and update budgets."""
    project = make_tiny_project(root)

    def edit(p):
        if run == "cpu":
            tiny_training(p)  # T1 and T2, update budgets, one thread
            p["compress"]["recovery"] = {"seconds": None, "updates": p["finetune"]["recipe"]["validate_every"]}
        else:
            p["training"].update(device="cuda", precision=run, world_size=1)
            for stage, seconds in (("pretrain", 15), ("finetune", 10), ("train_mt", 15)):
                p[stage]["recipe"]["budget"] = {"seconds": seconds, "updates": None}
            p["compress"]["recovery"] = {"seconds": 5, "updates": None}  # recovery trains on the GPU as well
        p["data"]["glue_tasks"] = p["data"]["glue_tasks"][:1]
        p["pretrain"]["sizes"] = p["pretrain"]["sizes"][:1]
        p["train_mt"]["sizes"] = p["train_mt"]["sizes"][:1]
        # compression and evaluation run on CPU whatever training did: the smallest grid that has each kind
        p["compress"].update(sparsities=[0.0, 0.5], bits=[8], onnx_sparsities=[0.0])
        p["evaluate"].update(threads=1, repeats=1, latency_examples=1, batch_size=8, bootstrap=10, beam=2,
                             max_dev_examples=16, max_test_sentences=4)
    set_params(project, edit)
    return project


def inspect(project: Path, run: str) -> dict:
    """What a pipeline run left: its learning curves, checkpoints and evaluation rows, each checked."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    size, task, mt = params["pretrain"]["sizes"][0], params["data"]["glue_tasks"][0], params["train_mt"]["sizes"][0]
    curves = [curve(project, Path("reports/curves") / f"{name}.csv")
              for name in (f"pretrain-{size}", f"finetune-{size}-{task}", f"train_mt-{mt}")]
    recovered = sorted(p.relative_to(project) for p in project.glob("models/compressed/*/recovered/*"))
    # a recovery starts from a pruned model that may be back at its best by the first point: not checked to fall
    curves += [curve(project, path / "curve.csv", must_fall=False) for path in recovered]
    paths = [Path("models/pretrain") / size, Path("models/finetune") / f"{size}-{task}", Path("models/mt") / mt]
    checkpoints = [checkpoint(project, path / "checkpoint.pt", run) for path in paths + recovered]
    evaluated = {path.stem: len(read_csv(path)) for path in sorted(project.glob("reports/eval/*.csv"))}
    devices = {f"{row['model']}/{row['variant']}": row["device"]
               for path in sorted(project.glob("reports/eval/*.csv")) for row in read_csv(path)}
    return {"curves": curves, "checkpoints": checkpoints, "evaluated_rows": evaluated,
            "evaluation_devices": devices, "evaluation_device_errors": device_errors(devices, run)}


def device_errors(devices: dict, run: str) -> list:
    """Rows scored where they should not be: ONNX models on the CPU (ONNX Runtime's CPU provider), every fairseq
    variant on the GPU when there is one (evaluate.device auto)."""
    errors = []
    for key, device in devices.items():
        expected = "cpu" if "onnx" in key or run == "cpu" else "cuda"
        if not device.startswith(expected):
            errors.append(f"{key} scored on {device}, expected {expected}")
    return errors


def curve(project: Path, path: Path, must_fall: bool = True) -> dict:
    name = str(path)
    try:
        rows = read_csv(project / path)
        losses = [float(r["valid_loss"]) for r in rows if r["valid_loss"] != ""]
    except (OSError, KeyError, ValueError) as e:  # missing or unreadable: a failed check, not a crashed one
        return {"curve": name, "ok": False, "error": f"{type(e).__name__}: {e}"}
    found = {"curve": name, "points": len(rows), "updates": int(rows[-1]["updates"]) if rows else 0,
             "seconds": float(rows[-1]["seconds"]) if rows else 0.0,
             "first_valid_loss": losses[0] if losses else None, "last_valid_loss": losses[-1] if losses else None,
             "finite": bool(losses) and all(math.isfinite(x) for x in losses),
             "falls": len(losses) >= 2 and losses[-1] < losses[0] if must_fall else None}
    return {**found, "ok": found["finite"] and found["falls"] is not False}


def checkpoint(project: Path, path: Path, run: str) -> dict:
    """Loads on CPU with the stages' own (weights-only) loader; fp32 and finite weights; and fairseq's
    recorded flags say it trained where and in the precision this run asked for."""
    import torch
    from lib.checkpoints import load_checkpoint
    found = {"checkpoint": str(path)}
    try:
        state = load_checkpoint(project / path)
        tensors = [t for t in state["model"].values() if t.is_floating_point()]
        common = state["cfg"]["common"]
    except Exception as e:  # missing, truncated, refused by the safe loader or not fairseq's: all fail the check
        return {**found, "ok": False, "error": f"{type(e).__name__}: {e}"}
    trained = "cpu fp32" if common["cpu"] else f"cuda {'bf16' if common['bf16'] else 'fp16' if common['fp16'] else 'fp32'}"
    found.update(loads_on_cpu=all(t.device.type == "cpu" for t in tensors), trained=trained,
                 fp32=all(t.dtype == torch.float32 for t in tensors),
                 finite=all(bool(t.isfinite().all()) for t in tensors))
    expected = "cpu fp32" if run == "cpu" else f"cuda {run}"
    return {**found, "ok": found["loads_on_cpu"] and found["fp32"] and found["finite"] and trained == expected}


def read_csv(path: Path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- 3. the training benchmark

def benchmark_project(root: Path, dry_run: bool, copies: int) -> Path:
    """A tiny project whose models.mlm holds the paper grid at the paper's batch (on CPU: the tests'
    tiny sizes), on the tiny corpus repeated `copies` times."""
    project = make_tiny_project(root)
    corpus = root / "mirror/wikitext2/wikitext-2-v1.zip"
    if copies > 1:
        import zipfile
        member = "wikitext-2/wiki.train.tokens"
        with zipfile.ZipFile(corpus) as z:
            text = z.read(member)
        with zipfile.ZipFile(corpus, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(member, text * copies)
    paper = yaml.safe_load((REPO / "profiles/paper.yaml").read_text())

    def edit(p):
        from lib.files import sha256sum
        p["datasets"]["wikitext2"]["files"]["wikitext-2-v1.zip"]["sha256"] = sha256sum(corpus)
        if dry_run:
            tiny_training(p)
        else:
            p["models"]["mlm"] = paper["models"]["mlm"]
            p["pretrain"]["sizes"] = paper["pretrain"]["sizes"]
            p["pretrain"]["recipe"].update(paper["pretrain"]["recipe"])
            p["training"].update(paper["training"])
    set_params(project, edit)
    return project


def benchmark(project: Path, sizes: list, flags: list, timeout_s: float, env: dict, log: Path) -> dict:
    """`python -m bench --only training` in the benchmark's project; its per-size lines are in the log
    if it is stopped before it writes its JSON."""
    out = project / "reports/bench.json"
    job = spawn([sys.executable, "-m", "bench", "--only", "training", "--sizes", *sizes, *flags, "--out", str(out)],
                project, env, log)
    result = {**finish(job, timeout_s), "sizes": sizes}
    if out.exists():
        bench = json.loads(out.read_text())
        result.update(precision=bench["settings"]["training_precision"], device=bench["settings"]["training_device"],
                      warmup=bench["settings"]["training_warmup"], updates=bench["settings"]["training_updates"],
                      rows=bench["training"])
    elif result["ok"]:
        result.update(ok=False, error=f"{out} was not written")
    return result


def loaders(project: Path, batches: int, seconds: float, env: dict, log: Path) -> dict:
    """`python -m bench.loader` in the benchmark's project (its data): 0, 1 and the auto number of workers."""
    from lib.devices import loader_workers
    from lib.schema import Training
    auto = loader_workers(Training(device="cuda", precision="auto", world_size=1, threads=None,
                                   loader_workers="auto", seed=1), "cuda")
    out = project / "reports/loader.json"
    job = spawn([sys.executable, "-m", "bench.loader", "--workers", *map(str, sorted({0, 1, auto})),
                 "--batches", str(batches), "--seconds", str(seconds), "--out", str(out)], project, env, log)
    result = finish(job, 240)
    if out.exists():
        result.update(json.loads(out.read_text()))
    elif result["ok"]:
        result.update(ok=False, error=f"{out} was not written")
    return result


# ---------------------------------------------------------------- child processes

def child_env(work: Path) -> dict:
    """This interpreter as `python` for dvc.yaml's commands (a wrapper: a symlink to a venv's python loses
    the venv), and this checkout on the path for `python -m bench` inside the tiny projects."""
    bin_dir = work / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1"}


def start(project: Path, targets: list, env: dict, log: Path):
    """`dvc init` and `dvc repro TARGETS` in `project`, in the background (its own process group)."""
    env = {**env, "DATA_MIRROR": str(project.parent / "mirror")}
    dvc = f'"{sys.executable}" -m dvc'
    return spawn(["sh", "-c", f"{dvc} init --no-scm -q && {dvc} repro {' '.join(targets)}"], project, env, log)


def spawn(command: list, cwd: Path, env: dict, log: Path):
    """`command` in the background, its output to `log`, in a process group of its own (to kill it whole)."""
    with open(log, "w") as f:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    return process, log, time.time()


def finish(job, timeout_s: float) -> dict:
    """Wait for a started job for up to `timeout_s` from its start; kill its whole process group past that."""
    process, log, started = job
    try:
        code = process.wait(max(1.0, started + timeout_s - time.time()))
        error = None if code == 0 else f"exit status {code}"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        error = f"stopped after {timeout_s:.0f} s"
    result = {"ok": error is None, "wall_s": round(time.time() - started, 1), "log": log.name}
    if error:
        result["error"] = error
        result["log_tail"] = log.read_text(errors="replace").splitlines()[-15:]
    return result


def log_path(out: Path, step: str) -> Path:
    return out.with_name(f"{out.stem}-{step}.log")


# ---------------------------------------------------------------- 4. the report

def failures(results: dict) -> list:
    found = []
    for run, result in results["pipeline"].items():
        if not result["ok"]:
            found.append(f"pipeline {run}: {result['error']} (see {result['log']})")
        found += [f"pipeline {run}: curve {c['curve']}: " + (c.get("error") or f"valid loss {c['first_valid_loss']} -> "
                  f"{c['last_valid_loss']}") for c in result["curves"] if not c["ok"]]
        found += [f"pipeline {run}: checkpoint {c['checkpoint']}: " + (c.get("error") or
                  f"trained {c['trained']}, fp32 {c['fp32']}, finite {c['finite']}")
                  for c in result["checkpoints"] if not c["ok"]]
        found += [f"pipeline {run}: evaluation: {e}" for e in result.get("evaluation_device_errors", [])]
    bench = results["benchmark"]
    if not bench["ok"]:
        found.append(f"benchmark: {bench['error']} (see {bench['log']})")
    if not results["loader"]["ok"]:
        found.append(f"loader: {results['loader']['error']} (see {results['loader']['log']})")
    return found


def markdown(results: dict) -> str:
    env = results["environment"]
    peaks = env.get("matmul_peak_tflops") or {}
    lines = [f"# GPU check ({results['mode']}, {results['started']}): {'pass' if results['ok'] else 'FAIL'}", "",
             f"{env.get('gpu') or 'no GPU'}, driver {env.get('driver')}, torch {env['torch']}, CUDA {env['cuda']}, "
             f"cuDNN {env['cudnn']}, NCCL {env.get('nccl')}; matmul peak "
             + (", ".join(f"{p} {v} TFLOP/s" for p, v in peaks.items()) or "not measured"), ""]
    rows = [[run, c["curve"], c.get("points"), c.get("updates"), c.get("seconds"), c.get("first_valid_loss"),
             c.get("last_valid_loss"), {True: "yes", False: "NO", None: "-"}[c.get("falls")] if "falls" in c
             else c.get("error")] for run, r in results["pipeline"].items() for c in r["curves"]]
    lines += ["## Tiny pipeline: learning curves", "",
              report.table(["run", "curve", "points", "updates", "seconds", "first valid loss", "last valid loss",
                            "falls"], rows)]
    rows = [[run, c["checkpoint"], c.get("trained"), "yes" if c["ok"] else f"NO {c.get('error', '')}"]
            for run, r in results["pipeline"].items() for c in r["checkpoints"]]
    lines += ["## Tiny pipeline: checkpoints (loaded on CPU)", "",
              report.table(["run", "checkpoint", "trained", "ok"], rows)]
    lines += ["Pipeline wall time: " + ", ".join(f"{run} {r['wall_s']:.0f} s" for run, r in results["pipeline"].items()),
              ""]
    bench = results["benchmark"]
    rows = [[r["size"], r["non_embedding_parameters"], r["fairseq"]["tokens_per_update"],
             *(r[loop][k] for loop in ("fairseq", "transformers") for k in ("tokens_per_s", "mfu", "peak_gpu_mb")),
             round(r["ratio"], 2)] for r in bench.get("rows", [])]
    lines += [f"## Training throughput ({bench.get('device')} {bench.get('precision')}, median of "
              f"{bench.get('updates')} updates after {bench.get('warmup')})", "",
              report.table(["size", "non-embedding params", "tokens/update", "fairseq tokens/s", "fairseq MFU",
                            "fairseq peak GPU MB", "transformers tokens/s", "transformers MFU",
                            "transformers peak GPU MB", "fairseq / transformers"], rows)]
    loader = results["loader"]
    rows = [[r["task"], r.get("loader", "pipeline"), r["workers"], r["batches_per_s"], r["tokens_per_batch"]]
            for r in loader.get("rows", [])]
    lines += ["## Loaders at the paper's batch shapes (bench/loader.py; this machine's CPU)", "",
              report.table(["task", "loader", "workers", "batches/s", "tokens a batch"], rows)]
    devices = sorted({f"{k.split('/')[1]}: {v}" for r in results["pipeline"].values()
                      for k, v in r.get("evaluation_devices", {}).items()})
    lines += ["## Where evaluate scored each variant", "", ", ".join(devices) or "no evaluation rows", ""]
    if results["failures"]:
        lines += ["## Failures", "", *(f"- {f}" for f in results["failures"]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
