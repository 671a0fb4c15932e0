"""Running a model over an evaluation set and timing it: batches of similar length, median timings after a
warm-up, ONNX Runtime sessions with a fixed thread count."""
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


def scoring_pass(run, items: list, length, batch_size: int) -> tuple[list, float]:
    """by_length's outputs, and its items per second: the pass over the whole evaluation set at the
    evaluation batch is the throughput measurement, so no model runs twice for it. One warm-up call
    first, so the first batch pays no one-off allocation."""
    run(items[:1])
    started = time.perf_counter()
    outputs = by_length(run, items, length, batch_size)
    return outputs, len(items) / (time.perf_counter() - started)


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


def speed(run, items: list, cfg, unit: str, throughput: float, timed_as=None) -> dict:
    """Batch-1 latency over the first `latency_examples` items (median of `repeats` runs), beside the
    scoring pass's throughput at `batch_size`. `timed_as` (a variant's name and latency) stands in for a
    model that runs the same kernels on other weights: a pruned ONNX model is as fast as the dense one."""
    if timed_as is None:
        single = [[x] for x in items[: cfg.latency_examples]]
        latency_ms = round(1000 * timed(run, single, cfg.repeats) / len(single), 3)
    else:
        latency_ms = timed_as[1]
    return {"latency_ms": latency_ms, "throughput": round(throughput, 2), "throughput_unit": unit}


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
