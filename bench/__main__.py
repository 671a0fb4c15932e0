"""python -m bench [--sizes SIZE ...] [--quick] [--only SECTION ...]: run the benchmarks from the project
root and write reports/bench.json and reports/bench.md (see bench/README.md).

The heavy work runs in child processes (bench.memory.in_child, bench.overhead.command), one per
measurement, so that imports, threads and memory of one measurement never leak into the next.
"""
import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path

from bench import deployment, memory, overhead, report, training

SECTIONS = ["training", "deployment", "overhead"]
# --quick: what the children import, loaded once in the forkserver they fork from
PRELOAD = ["torch", "fairseq", "fairseq_cli.train", "transformers", "optimum.onnxruntime", "stages.evaluate",
           "lib.hf_roberta", "lib.hf_m2m100"]
PROBES = ["pretrain", "finetune", "train_mt"]


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", metavar="SIZE",
                        help="model sizes, keys of models.mlm / models.mt (default: pretrain.sizes, train_mt.sizes)")
    parser.add_argument("--quick", action="store_true",
                        help="few updates and repeats, capped dev/test sets and budgets (minutes, not an hour)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=SECTIONS, help="sections to run (default: all)")
    parser.add_argument("--probe", nargs="*", choices=PROBES, default=PROBES,
                        help="training stages whose budget utilisation is measured (each runs its whole budget)")
    parser.add_argument("--threads", type=int, help="training threads (default: training.threads, else all cores)")
    parser.add_argument("--mt-sentences", type=int, default=200,
                        help="test sentences for translation speed and BLEU (default 200; --quick: 16)")
    parser.add_argument("--out", type=Path, default=Path("reports/bench.json"), help="the markdown goes beside it")
    return parser.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    from lib import hardware
    from lib.errors import StageError
    from lib.model_size import non_embedding_params
    from lib.params import load_params
    params = load_params()
    unknown = [s for s in args.sizes or [] if s not in params.models.mlm and s not in params.models.mt]
    if unknown:
        raise StageError(f"--sizes: {unknown} are neither in models.mlm {list(params.models.mlm)} "
                         f"nor in models.mt {list(params.models.mt)}")
    mlm = [s for s in args.sizes or params.pretrain.sizes if s in params.models.mlm]
    mt = [s for s in args.sizes or params.train_mt.sizes if s in params.models.mt]
    quick = args.quick
    threads = args.threads or params.training.threads or os.cpu_count()
    evaluation = ({"repeats": 2, "latency_examples": 4, "max_dev_examples": 64, "bootstrap": 50,
                   "max_test_sentences": min(args.mt_sentences, 16)} if quick else
                  # this machine's speed drifts by +-25% between seconds (measured): more repeats and
                  # latency inputs than the pipeline's evaluation, for stabler medians
                  {"max_test_sentences": args.mt_sentences, "repeats": 7, "latency_examples": 16})
    if quick:
        memory.preload(PRELOAD)
    started, load_average = time.time(), os.getloadavg()[0]
    device = "cuda" if gpu() and params.training.device != "cpu" else "cpu"  # as lib.devices.device_flags picks
    results = {
        "command": " ".join(["python -m bench", *argv]),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "hardware": {"cpu": hardware.cpu(), "cpu_flags": hardware.isa_flags(), "cores": os.cpu_count(), "gpu": gpu(),
                     "python": platform.python_version(), "versions": versions()},
        "settings": {"quick": quick, "children": "forked from a server with the libraries imported (peaks include "
                     "them all)" if quick else "fresh interpreters (spawn)", "mlm_sizes": mlm, "mt_sizes": mt,
                     "largest_size": max(mlm, key=lambda s: non_embedding_params(params.models.mlm[s]), default=None),
                     # what fairseq is timed in: "fp32+bf16" on CPU (bf16 as the stages' autocast), else
                     # training.precision's choice; the transformers loop runs in the first one
                     "training_device": device, "training_precision": "+".join(training.precisions(params)),
                     "training_threads": threads, "training_warmup": 2 if quick else 5,
                     "training_updates": 6 if quick else 25, "eval_threads": params.evaluate.threads,
                     "evaluate": {**params.evaluate.model_dump(), **evaluation}},
        "notes": NOTES}
    st = results["settings"]
    if load_average > 0.5:
        print(f"warning: load average {load_average:.2f}: other work on this machine will skew the timings",
              flush=True)
    sections = {}
    if "training" in args.only:
        results["training"] = training.run(mlm, st["training_warmup"], st["training_updates"], threads)
        sections["training"] = time.time()
    if "deployment" in args.only:
        results["deployment"] = {"glue": deployment.run_glue(mlm, params.data.glue_tasks, evaluation),
                                 "mt": deployment.run_mt(mt, evaluation)}
        sections["deployment"] = time.time()
    if "overhead" in args.only:
        probes = {"pretrain": mlm[:1], "finetune": [*mlm[:1], *params.data.glue_tasks[:1]], "train_mt": mt[:1]}
        results["overhead"] = {
            "dvc": overhead.dvc_noop(1 if quick else 3),
            # --quick leaves out the import timing: the utilisation probe's start-up includes those imports
            "startup": overhead.startup(1, ["pretrain"], imports=False) if quick else
            overhead.startup(3, ["pretrain", "finetune", "train_mt", "compress", "evaluate"]),
            "method": overhead.UTILISATION_METHOD,
            "budget_utilisation": [overhead.utilisation(stage, probes[stage], 20 if quick else None)
                                   for stage in args.probe if probes[stage]]}
        sections["overhead"] = time.time()
    st["load_average_start_end"] = [load_average, os.getloadavg()[0]]  # other work on the machine skews timings
    results["memory"] = report.memory_rows(results)
    results["targets"] = report.add_targets(results)
    if "deployment" in results and not quick:
        deployment.explain_misses(results)
    results["duration_s"] = round(time.time() - started, 1)
    ends = [started, *sections.values()]
    results["section_s"] = {name: round(end - before, 1) for name, end, before in zip(sections, ends[1:], ends)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(report.markdown(results))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.md')}\n")
    print(report.table(["target", "value", "goal", "verdict (margin)"],
                       [[t["name"], t["value"], t["goal"], report.verdict(t)] for t in results["targets"]]))
    return results


NOTES = [
    "Training: both loops train the same RoBERTa on fairseq's own masked batches with AdamW-equivalent "
    "optimizers; tokens/s is the median over timed updates of tokens / time between update ends (data "
    "loading between updates included; start-up, warm-up and validation excluded). fairseq's masked_lm "
    "computes the vocabulary projection only at masked positions, RobertaForMaskedLM at every position. "
    "On CPU fairseq also trains in bf16 as the stages do (torch.autocast around its fp32 model, not fairseq's "
    "--bf16); the transformers loop and the fairseq / transformers ratio are fp32.",
    "Deployment: stages.evaluate's own GlueEval / TranslationEval (timed, speed, load_onnx): PyTorch runs "
    "on token tensors, ONNX Runtime on raw text (tokenization included in its timing).",
    "Memory: VmHWM of each child process (getrusage's ru_maxrss would start at the parent's peak on Linux).",
    "CPU timings are only comparable on an otherwise idle machine; the load average is recorded in settings.",
]


def gpu():
    import torch
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def versions() -> dict:
    found = {}
    for name in ("torch", "onnxruntime", "transformers", "optimum", "ve-fairseq", "fairseq-fixed", "fairseq", "dvc"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


if __name__ == "__main__":
    from lib.stage import run_stage
    run_stage(main)
