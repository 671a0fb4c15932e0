"""Running a model over an evaluation set and timing it: batches of similar length, median timings after a
warm-up, ONNX Runtime sessions with a fixed thread count. Scoring (every example) and timing (a fixed sample)
are separate passes, so scoring can use every core (or a GPU) while timings stay at evaluate.threads."""
import os
import statistics
import time
from pathlib import Path

from lib.errors import StageError


def by_length(run, items: list, length, batch_size: int) -> list:
    """`run(batch)` (one output per item) over batches of items of similar length, so little compute
    goes to padding; the outputs come back in the order of `items`."""
    order = sorted(range(len(items)), key=lambda i: length(items[i]))
    outputs = [None] * len(items)
    for lo in range(0, len(order), batch_size):
        chunk = order[lo: lo + batch_size]
        for i, output in zip(chunk, run([items[i] for i in chunk])):
            outputs[i] = output
    return outputs


def throughput(run, items: list, length, batch_size: int) -> float:
    """Items per second of by_length over `items` at `batch_size`, after one warm-up call (so the first batch
    pays no one-off allocation)."""
    run(items[:1])
    started = time.perf_counter()
    by_length(run, items, length, batch_size)
    return len(items) / (time.perf_counter() - started)


def timed(run, batches: list, repeats: int) -> float:
    """Median seconds of running every batch in `batches`, after one warm-up call: the scoring pass before
    this ran the model at the evaluation batch size, not at this one."""
    run(batches[0])
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for batch in batches:
            run(batch)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def speed(run, items: list, length, cfg, unit: str, timed_as=None) -> dict:
    """A deployment format's speed on the threads `run` was set up with (evaluate.threads): throughput at
    `batch_size` over the first `throughput_examples` items, and batch-1 latency over the first
    `latency_examples` (median of `repeats` runs); `timing_s`, the seconds the timing took. `timed_as` (a
    variant's name and speed) stands in for a model that runs the same kernels on other weights: a pruned ONNX
    model is as fast as its format's dense one."""
    if timed_as is not None:
        return {**timed_as[1], "timing_s": 0.0}
    started = time.perf_counter()
    rate = throughput(run, items[: cfg.throughput_examples], length, cfg.batch_size)
    single = [[x] for x in items[: cfg.latency_examples]]
    latency_ms = round(1000 * timed(run, single, cfg.repeats) / len(single), 3)
    return {"latency_ms": latency_ms, "throughput": round(rate, 2), "throughput_unit": unit,
            "timing_s": round(time.perf_counter() - started, 2)}


def scoring_threads(setting) -> int:
    """Threads of the scoring passes on the CPU (evaluate.scoring_threads): `auto`, every core this process may
    use; scores do not depend on it, only timings do, and those run on evaluate.threads."""
    return len(os.sched_getaffinity(0)) if setting == "auto" else setting


def cpu_speed(model, run, items: list, length, cfg, unit: str) -> dict:
    """speed() of a PyTorch model, moved to the CPU (it may have been scored on a GPU) and run on torch's
    `cfg.threads` threads, which are restored after."""
    import torch
    model.to("cpu")
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return speed(run, items, length, cfg, unit)
    finally:
        torch.set_num_threads(before)


def onnx_timing_model(model_class, variant: Path, scored, scoring_threads: int, threads: int):
    """The ONNX model to time: the one that scored, when its session already runs on the timing threads; else
    the model loaded again in a session with `threads`."""
    return scored if scoring_threads == threads else load_onnx(model_class, variant, threads)


def load_onnx(model_class, variant: Path, threads: int):
    """An optimum ONNX Runtime model with a fixed thread count; a broken file is named in the error. A translator
    directory holds optimum's standard file names and no merged decoder (lib/hf_m2m100.py), so optimum loads it
    without a warning; a classifier directory's one .onnx file is named."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    # idle ONNX Runtime threads spin by default, stealing the cores from whatever is timed next
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    files = sorted(f.name for f in variant.glob("*.onnx"))
    try:
        if model_class.__name__ == "ORTModelForSeq2SeqLM":
            return model_class.from_pretrained(variant, session_options=options, use_merged=False)
        return model_class.from_pretrained(variant, file_name=files[0] if files else None, session_options=options)
    except Exception as e:
        raise StageError(f"{variant}: cannot load the ONNX model ({', '.join(files) or 'no .onnx file'}): "
                         f"{type(e).__name__}: {e}") from e
