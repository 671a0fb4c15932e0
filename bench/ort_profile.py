"""python -m bench.ort_profile [MODEL] [--batch 32] [--threads 2] [--repeats 10]: where an ONNX deployment
classifier spends its time at one batch size, from ONNX Runtime's own profiler: milliseconds per batch by
operator type for the fp32 and the int8 model of MODEL (default: the largest size on the first GLUE task),
beside the tokenizer's share, and with idle-thread spinning off (what stages.evaluate times) and on.
Prints a table; the numbers behind a missed deployment target (bench/README.md)."""
import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lib.variants import COMPRESSED_DIR, variant_name


def session(onnx_file: Path, threads: int, spinning: bool, profile_dir: str | None = None):
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if profile_dir:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(profile_dir) / "ort")
    return onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])


def op_times(onnx_file: Path, feed: dict, threads: int, repeats: int) -> dict:
    """Milliseconds per run by operator type, the first (warm-up) run left out."""
    with tempfile.TemporaryDirectory() as tmp:
        profiled = session(onnx_file, threads, spinning=False, profile_dir=tmp)
        for _ in range(repeats + 1):
            profiled.run(None, feed)
        events = json.loads(Path(profiled.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    first_end = runs[0]["ts"] + runs[0]["dur"]  # the warm-up run is left out
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first_end:
            per_op[e["args"]["op_name"]] += e["dur"] / 1000 / repeats
    return dict(per_op.most_common())


def wall_ms(onnx_file: Path, feed: dict, threads: int, repeats: int, spinning: bool) -> float:
    timed = session(onnx_file, threads, spinning)
    timed.run(None, feed)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        timed.run(None, feed)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main(argv=None):
    from lib.glue import read_tsv
    from lib.glue_task import GLUE_DATA, glue_meta
    from lib.errors import StageError
    from lib.params import load_params
    params = load_params()
    parser = argparse.ArgumentParser(prog="python -m bench.ort_profile", description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", default=f"{params.pretrain.sizes[-1]}-{params.data.glue_tasks[0]}",
                        help="a directory name under models/compressed (default: %(default)s)")
    parser.add_argument("--sparsity", type=float, default=0.0)
    parser.add_argument("--batch", type=int, default=params.evaluate.batch_size)
    parser.add_argument("--threads", type=int, default=params.evaluate.threads)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from transformers import AutoTokenizer
    root = COMPRESSED_DIR / args.model
    dirs = {fmt: root / variant_name(args.sparsity, bits, fmt) for fmt, bits in (("fp32", 32), ("int8", 8))}
    missing = [str(d) for d in dirs.values() if not any(d.glob("*.onnx"))]
    if missing:
        raise StageError(f"no ONNX model in {missing}: run `dvc repro` first (compress.onnx_sparsities "
                         f"must list {args.sparsity})")
    task = json.loads((dirs["fp32"] / "variant.json").read_text())["task"]
    meta = glue_meta(task)
    columns = ["sentence1", "sentence2"] if meta["pair"] else ["sentence1"]
    rows = read_tsv(GLUE_DATA / task / f"{meta['fairseq_splits']['valid']}.tsv", meta)[: args.batch]
    tokenizer = AutoTokenizer.from_pretrained(dirs["fp32"])
    texts = [[r[c] for r in rows] for c in columns]
    started = time.perf_counter()
    for _ in range(args.repeats):
        encoded = tokenizer(*texts, padding=True, truncation=True, return_tensors="np")
    tokenize_ms = (time.perf_counter() - started) * 1000 / args.repeats

    results = {}
    for fmt, directory in dirs.items():
        onnx_file = sorted(directory.glob("*.onnx"))[0]
        names = [i.name for i in session(onnx_file, 1, False).get_inputs()]
        feed = {name: encoded[name].astype("int64") for name in names}
        results[fmt] = {"ops": op_times(onnx_file, feed, args.threads, args.repeats),
                        "wall_ms": wall_ms(onnx_file, feed, args.threads, args.repeats, spinning=False),
                        "wall_spinning_ms": wall_ms(onnx_file, feed, args.threads, args.repeats, spinning=True)}
    print(f"{args.model}, sparsity {args.sparsity}: batch {args.batch} ({encoded['input_ids'].shape[1]} tokens "
          f"padded), {args.threads} threads, median of {args.repeats} runs\n")
    print(f"tokenizer: {tokenize_ms:.2f} ms per batch")
    for fmt, r in results.items():
        print(f"ONNX {fmt}: {r['wall_ms']:.2f} ms per batch with spinning off (as evaluated), "
              f"{r['wall_spinning_ms']:.2f} ms with spinning on")
    ops = sorted(set(results["fp32"]["ops"]) | set(results["int8"]["ops"]),
                 key=lambda op: -max(results["fp32"]["ops"].get(op, 0), results["int8"]["ops"].get(op, 0)))
    print(f"\n{'operator':28s} {'fp32 ms':>9s} {'int8 ms':>9s}")
    for op in ops:
        print(f"{op:28s} {results['fp32']['ops'].get(op, 0):9.2f} {results['int8']['ops'].get(op, 0):9.2f}")
    print(f"{'sum of operators':28s} {sum(results['fp32']['ops'].values()):9.2f} "
          f"{sum(results['int8']['ops'].values()):9.2f}")
    return results


if __name__ == "__main__":
    from lib.stage import run_stage
    run_stage(main)
