"""python -m bench.ort_profile [MODEL] [--batch 32] [--threads 2] [--repeats 10]: where an ONNX deployment
classifier spends its time at one batch size, from ONNX Runtime's own profiler: milliseconds per batch by
operator type for the fp32 and the int8 model of MODEL (default: the largest size on the first GLUE task),
beside the tokenizer's share, and with idle-thread spinning off (what stages.evaluate times) and on.
Prints a table; the numbers behind a missed deployment target (bench/README.md). `python -m bench` calls its
functions for each missed deployment target and writes what they find beside it."""
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


def classifier_profile(model: str, sparsity: float, batch: int, threads: int, repeats: int) -> dict:
    """ONNX Runtime's milliseconds per operator type for the fp32 and int8 classifiers of `model` (a directory
    under models/compressed) on `batch` dev examples, their wall time with spinning off and on, and the
    tokenizer's time per batch."""
    from transformers import AutoTokenizer
    from lib.errors import StageError
    from lib.glue import read_tsv
    from lib.glue_task import GLUE_DATA, glue_meta
    root = COMPRESSED_DIR / model
    dirs = {fmt: root / variant_name(sparsity, bits, fmt) for fmt, bits in (("fp32", 32), ("int8", 8))}
    missing = [str(d) for d in dirs.values() if not any(d.glob("*.onnx"))]
    if missing:
        raise StageError(f"no ONNX model in {missing}: run `dvc repro` first (compress.onnx_sparsities "
                         f"must list {sparsity})")
    task = json.loads((dirs["fp32"] / "variant.json").read_text())["task"]
    meta = glue_meta(task)
    columns = ["sentence1", "sentence2"] if meta["pair"] else ["sentence1"]
    rows = read_tsv(GLUE_DATA / task / f"{meta['fairseq_splits']['valid']}.tsv", meta)[:batch]
    tokenizer = AutoTokenizer.from_pretrained(dirs["fp32"])
    texts = [[r[c] for r in rows] for c in columns]
    started = time.perf_counter()
    for _ in range(repeats):
        encoded = tokenizer(*texts, padding=True, truncation=True, return_tensors="np")
    results = {"tokenize_ms": (time.perf_counter() - started) * 1000 / repeats,
               "padded_tokens": int(encoded["input_ids"].shape[1])}
    for fmt, directory in dirs.items():
        onnx_file = sorted(directory.glob("*.onnx"))[0]
        names = [i.name for i in session(onnx_file, 1, False).get_inputs()]
        feed = {name: encoded[name].astype("int64") for name in names}
        results[fmt] = {"ops": op_times(onnx_file, feed, threads, repeats),
                        "wall_ms": wall_ms(onnx_file, feed, threads, repeats, spinning=False),
                        "wall_spinning_ms": wall_ms(onnx_file, feed, threads, repeats, spinning=True)}
    return results


def classifier_summary(profile: dict) -> str:
    """One sentence: how much the int8 operators save, and the operators that do not shrink."""
    fp32, int8 = (sum(profile[f]["ops"].values()) for f in ("fp32", "int8"))
    kept = sorted(((op, ms) for op, ms in profile["int8"]["ops"].items() if op in profile["fp32"]["ops"]
                   and ms >= 0.8 * profile["fp32"]["ops"][op]), key=lambda x: -x[1])
    return (f"ONNX Runtime's profiler: the int8 operators sum to {int8:.1f} ms per batch against fp32's {fp32:.1f} "
            f"({fp32 / int8:.2f}x); those that do not shrink take {sum(ms for _, ms in kept):.1f} ms of int8's ("
            + ", ".join(f"{op} {ms:.1f}" for op, ms in kept[:5])
            + f"); the tokenizer adds {profile['tokenize_ms']:.1f} ms a batch to both; wall "
            f"{profile['fp32']['wall_ms']:.1f} (fp32) vs {profile['int8']['wall_ms']:.1f} ms (int8) a batch")


def int4_bytes(int4_dir: str) -> str:
    """Where an int4 model's bytes go: 4-bit codes, their fp32 scales, and tensors left in fp32."""
    import onnx
    from onnx import numpy_helper
    kinds = collections.Counter()
    for f in Path(int4_dir).glob("*.onnx"):
        for t in onnx.load(str(f)).graph.initializer:
            array = numpy_helper.to_array(t)
            kind = "scales" if t.name.endswith("_scales") else "4-bit codes" if t.name.endswith("_Q4") else \
                f"other {array.dtype}"
            kinds[kind] += array.nbytes
    total = sum(kinds.values())
    return "int4 bytes (unzipped): " + ", ".join(f"{k} {v / total:.1%}" for k, v in kinds.most_common())


def generation_profile(variant: str, sentences: int, beam: int, threads: int) -> str:
    """cProfile of the ONNX translator's batch-1 beam search over `sentences` test sentences: the share of
    time inside ONNX Runtime's session runs, and the runs per sentence."""
    import cProfile
    import pstats
    import sentencepiece
    from optimum.onnxruntime import ORTModelForSeq2SeqLM
    from lib.files import read_lines
    from lib.inference import load_onnx
    from lib.ort_generate import translate
    model = load_onnx(ORTModelForSeq2SeqLM, Path(variant), threads=threads)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(Path(variant) / "spm.model"))
    sources = read_lines(Path("data/bin/mt/test.raw.en"))[:sentences]

    def run():
        for source in sources:
            translate(model, sp, [source], beam)
    run()  # warm-up
    profiler = cProfile.Profile()
    profiler.runcall(run)
    stats = pstats.Stats(profiler).stats
    total = sum(tt for _, _, tt, _, _ in stats.values())
    ort = [(calls, cumulative) for (file, _, name), (calls, _, _, cumulative, _) in stats.items()
           if name == "run" and "onnxruntime_inference_collection" in file]
    inside = sum(c for _, c in ort)
    runs = sum(n for n, _ in ort)
    return (f"cProfile of batch-1 beam-{beam} generation ({sentences} sentences): {inside / total:.0%} of the time "
            f"is inside ONNX Runtime's session runs, {runs / sentences:.0f} runs a sentence "
            f"({1000 * inside / runs:.2f} ms each), the rest in the Python beam search")


def main(argv=None):
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
    results = classifier_profile(args.model, args.sparsity, args.batch, args.threads, args.repeats)
    print(f"{args.model}, sparsity {args.sparsity}: batch {args.batch} ({results['padded_tokens']} tokens "
          f"padded), {args.threads} threads, median of {args.repeats} runs\n")
    print(f"tokenizer: {results['tokenize_ms']:.2f} ms per batch")
    for fmt in ("fp32", "int8"):
        r = results[fmt]
        print(f"ONNX {fmt}: {r['wall_ms']:.2f} ms per batch with spinning off (as evaluated), "
              f"{r['wall_spinning_ms']:.2f} ms with spinning on")
    ops = sorted(set(results["fp32"]["ops"]) | set(results["int8"]["ops"]),
                 key=lambda op: -max(results["fp32"]["ops"].get(op, 0), results["int8"]["ops"].get(op, 0)))
    print(f"\n{'operator':28s} {'fp32 ms':>9s} {'int8 ms':>9s}")
    for op in ops:
        print(f"{op:28s} {results['fp32']['ops'].get(op, 0):9.2f} {results['int8']['ops'].get(op, 0):9.2f}")
    print(f"{'sum of operators':28s} {sum(results['fp32']['ops'].values()):9.2f} "
          f"{sum(results['int8']['ops'].values()):9.2f}")
    print("\n" + classifier_summary(results))
    return results


if __name__ == "__main__":
    from lib.stage import run_stage
    run_stage(main)
