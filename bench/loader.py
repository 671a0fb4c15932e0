"""Batches per second of fairseq's training data loaders at the paper profile's batch shapes, by number of
loader workers (fairseq's --num-workers), on this machine's CPU: what sets the pace of a GPU run when the
batches cannot be built as fast as the GPU takes them (issue 32).

  python -m bench.loader [--workers 0 1 2] [--batches 40] [--seconds 5] [--tasks mlm mt] [--out reports/loader.json]

Each loader is the training stage's own (for the masked LM, batches built a batch at a time,
lib/masked_lm_batches.py; fairseq's own masked_lm pipeline, one sequence at a time, is measured beside it
with 0 workers, as "fairseq"): the flags of lib/recipes.pretrain_args / translation_args with the
paper profile's recipe (masked LM: 512 sequences of 128 tokens, 15% masking; translation: 16,384-token
batches) on the data/bin/mlm and data/bin/mt of the directory it runs in, iterated as fairseq-train iterates
them (task.get_batch_iterator, next_epoch_itr), in a fresh process per measurement. The clock starts after the
first batch (worker start-up) and runs over at least `--batches` batches and `--seconds` seconds, epochs rolled
over. With workers, the training process only receives the batches: its CPU time a batch (main_cpu_ms) bounds
what any number of workers can deliver to it.

Against what a GPU needs: the step rate of the smallest paper size of each grid on an H100, estimated from
the FLOPs of a step (step_flops) at a third of the H100's dense bf16 peak (the issue's assumption; `make
gpu-check` measures the real rate on the first lent GPU), and the workers `training.loader_workers: auto`
gives a rank on a 16-core GPU node (lib/devices.loader_workers): the target is that they build >= 3x the
batches the GPU takes."""
import argparse
import contextlib
import json
import math
import multiprocessing
import os
import time
from pathlib import Path

import yaml

from bench.report import check, paper_params, table, verdict

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "reports" / "loader.json"
H100_BF16_FLOPS = 989e12   # H100 SXM dense bf16 tensor-core peak (NVIDIA's datasheet)
ASSUMED_MFU = 1 / 3        # the share of it training sustains (issue 32's estimate; gpu-check measures it)
GPU_NODE_CORES = 16        # the lent H100 machine's CPU cores per GPU
SMALLEST = {"mlm": "L6-H256", "mt": "L6-H512"}  # the smallest size of each paper grid: the fastest steps
TARGET_HEADROOM = 3.0      # loaders must build >= 3x the batches the GPU takes


def paper():
    """The paper profile's params, validated (lib.params.Params): the recipes whose batches a paper run builds."""
    from lib.params import Params
    merged = paper_params()
    merged["training"] |= {"device": "cpu", "precision": "fp32"}
    return Params.model_validate({**merged, **yaml.safe_load((REPO / "datasets.yaml").read_text())})


def loader_args(task: str, workers: int) -> list[str]:
    """fairseq-train's flags of the paper profile's recipe for `task`, with `workers` loader workers."""
    from lib.recipes import pretrain_args, translation_args
    args, _ = (pretrain_args if task == "mlm" else translation_args)(paper(), SMALLEST[task])
    args = [str(a) for a in args]
    args[args.index("--num-workers") + 1] = str(workers)
    return args


def measure(task: str, workers: int, batches: int, seconds: float, queue, stock: bool = False) -> None:
    """In a child process: build the task from the flags and time at least `batches` batches after the first,
    and at least `seconds` (with fairseq's own masked-LM pipeline when `stock`)."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    import lib.schedule  # noqa: F401  registers the recipes' budget_linear scheduler
    from lib.masked_lm_batches import batched_masking
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(),
                                                                     loader_args(task, workers)))
    fairseq_task = tasks.setup_task(cfg.task)
    with (contextlib.nullcontext() if stock else batched_masking()):  # the training stages' batches, or fairseq's
        fairseq_task.load_dataset("train", combine=False, epoch=1)
    dataset = fairseq_task.dataset("train")
    iterator = fairseq_task.get_batch_iterator(  # one iterator, epoch after epoch, as fairseq-train's
        dataset=dataset, max_tokens=cfg.dataset.max_tokens, max_sentences=cfg.dataset.batch_size,
        max_positions=fairseq_task.max_positions(), required_batch_size_multiple=8, seed=1, num_workers=workers)
    tokens, done, start, cpu_start, elapsed = 0, -1, 0.0, 0.0, 0.0
    while done < batches or elapsed < seconds:
        for sample in iterator.next_epoch_itr(shuffle=True):
            done += 1
            if done == 0:  # the first batch pays the workers' start-up: the clock starts after it
                start, cpu_start = time.perf_counter(), time.process_time()
                continue
            tokens += sample["ntokens"]
            elapsed = time.perf_counter() - start
            if done >= batches and elapsed >= seconds:
                break
    main_cpu = time.process_time() - cpu_start
    queue.put({"task": task, "loader": "fairseq" if stock else "pipeline", "workers": workers, "batches": done,
               "seconds": round(elapsed, 2), "batches_per_s": round(done / elapsed, 2),
               "main_cpu_ms": round(1000 * main_cpu / done, 2), "tokens_per_batch": round(tokens / done)})


def run(task: str, workers: int, batches: int, seconds: float, stock: bool = False) -> dict:
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing cached from the last one
    queue = context.Queue()
    child = context.Process(target=measure, args=(task, workers, batches, seconds, queue, stock))
    child.start()
    while child.is_alive() or not queue.empty():
        try:
            result = queue.get(timeout=1)
            child.join()
            return result
        except Exception:  # queue.Empty: still measuring
            continue
    raise SystemExit(f"bench.loader: the {task} measurement with {workers} workers failed (exit {child.exitcode}): "
                     "its error is above")


def step_flops(task: str) -> float:
    """FLOPs of one training step of the smallest paper size at the paper batch: 6 N per token through the
    Transformer layers (Kaplan et al., 2020), attention's 12 L H T per token (forward and backward of the
    score and value products), and the output projection (6 V H per predicted token: the masked 15% for the
    masked LM, every target token for translation; 32k and 40k vocabularies)."""
    from lib.model_size import non_embedding_params
    params = paper()
    if task == "mlm":
        size, recipe = params.models.mlm[SMALLEST[task]], params.pretrain.recipe
        tokens, length = recipe.max_tokens, recipe.tokens_per_sample
        layers = 6 * non_embedding_params(size) * tokens + 12 * size.layers * size.hidden * length * tokens
        return layers + 6 * params.prepare_mlm.vocab_size * size.hidden * recipe.mask_prob * tokens
    size, recipe = params.models.mt[SMALLEST[task]], params.train_mt.recipe
    side = recipe.max_tokens  # fairseq's max_tokens bounds each side; source and target are of similar length
    length = 30               # tokens a WMT'14 sentence, either side (reports/rehearsal-data.md: ~30 pieces)
    encoder, decoder = non_embedding_params(size), non_embedding_params(size, decoder=True)
    attention = 12 * size.layers * size.hidden * length * side * 3  # encoder self, decoder self and cross
    return 6 * (encoder + decoder) * side + attention + 6 * params.prepare_mt.vocab_size * size.hidden * side


def gpu_needs(task: str) -> dict:
    seconds = step_flops(task) / (H100_BF16_FLOPS * ASSUMED_MFU)
    return {"size": SMALLEST[task], "step_tflops": round(step_flops(task) / 1e12, 2),
            "step_ms": round(1000 * seconds, 1), "steps_per_s": round(1 / seconds, 1)}


def targets(report: dict) -> list:
    from lib.devices import loader_workers
    params = paper()
    gpu = params.training.model_copy(update={"loader_workers": "auto", "world_size": 1})
    workers = loader_workers(gpu, "cuda", cores=GPU_NODE_CORES)
    rows = []
    for task, rate in report["per_worker"].items():
        steps = report["gpu"][task]["steps_per_s"]
        # workers build batches independently (the rate adds up while cores are free), up to what the training
        # process can receive: 1 / its CPU time a batch with workers
        receive = report.get("receive_per_s", {}).get(task, math.inf)
        ratio = min(workers * rate, receive) / steps
        rows.append({"name": f"{task}: batches/s of {workers} workers (auto on a {GPU_NODE_CORES}-core node), at most "
                             f"what training receives / {SMALLEST[task]}'s H100 steps/s", "value": round(ratio, 2),
                     "workers": workers, "workers_needed": math.ceil(TARGET_HEADROOM * steps / rate)
                     if receive >= TARGET_HEADROOM * steps else "none suffice",
                     **check(ratio, ">=", TARGET_HEADROOM)})
    return rows


def per_worker(rows: list, task: str) -> float:
    mine = {r["workers"]: r["batches_per_s"] for r in rows if r["task"] == task and r["loader"] == "pipeline"}
    return mine[1] if 1 in mine else mine[0]


def markdown(report: dict) -> str:
    m = report["machine"]
    out = ["# Training data loaders at the paper batch\n",
           f"`python -m bench.loader` on {m['cpu']}, {m['cores']} cores; data: "
           f"{report['data']}. Batches per second after the first, by loader workers (fairseq's --num-workers).\n",
           table(["task", "loader", "workers", "batches", "seconds", "batches/s", "training process's CPU ms a batch",
                  "tokens a batch"],
                 [[r["task"], r.get("loader", "pipeline"), r["workers"], r["batches"], r["seconds"],
                   r["batches_per_s"], r.get("main_cpu_ms", ""), r["tokens_per_batch"]] for r in report["rows"]]),
           "\nA worker's rate is the 1-worker row's (what one worker process delivers); with workers, the training "
           "process's CPU time a batch is what receiving costs it, and bounds the rate of any number of workers.\n",
           "\n## Against an H100's step rate (estimated: bench/loader.py step_flops, a third of 989 TFLOP/s bf16)\n",
           table(["task", "smallest size", "TFLOPs a step", "ms a step", "steps/s"],
                 [[t, g["size"], g["step_tflops"], g["step_ms"], g["steps_per_s"]] for t, g in report["gpu"].items()]),
           "",
           table(["target", "value", "goal", "verdict (margin)", "workers needed for 3x"],
                 [[t["name"], t["value"], t["goal"], verdict(t), t["workers_needed"]] for t in report["targets"]])]
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.loader", description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batches", type=int, default=40, help="at least this many batches timed")
    p.add_argument("--seconds", type=float, default=5.0, help="and for at least this long")
    p.add_argument("--tasks", nargs="+", choices=["mlm", "mt"], default=["mlm", "mt"])
    p.add_argument("--out", type=Path, default=OUT, help="JSON results (the markdown goes beside it)")
    args = p.parse_args(argv)
    from lib import hardware
    rows = []
    for task in args.tasks:
        if task == "mlm":  # fairseq's own masking, for comparison: what the stages used before
            rows.append(run(task, 0, args.batches, args.seconds, stock=True))
            print(json.dumps(rows[-1]), flush=True)
        for workers in args.workers:
            rows.append(run(task, workers, args.batches, args.seconds))
            print(json.dumps(rows[-1]), flush=True)
    report = {"machine": {"cpu": hardware.cpu(), "flags": hardware.isa_flags(), "cores": os.cpu_count()},
              "data": f"{Path.cwd()}/data/bin (its dictionaries; the batch shapes are the paper's)", "rows": rows,
              # one worker's rate: what one worker process delivers (the 1-worker row; else the loader in the
              # training process); receiving a batch from workers costs the training process main_cpu_ms
              "per_worker": {task: per_worker(rows, task) for task in args.tasks},
              "receive_per_s": {task: round(1000 / max(r["main_cpu_ms"] for r in rows
                                                       if r["task"] == task and r["workers"] > 0), 1)
                                for task in args.tasks if any(r["task"] == task and r["workers"] > 0 for r in rows)},
              "gpu": {task: gpu_needs(task) for task in args.tasks}}
    report["targets"] = targets(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
