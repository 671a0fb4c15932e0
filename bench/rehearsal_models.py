"""Rehearsal of the paper profile's model stages at the paper's sizes, on this machine's CPU (issue 32).

  python -m bench.rehearsal models [--mlm SIZE ...] [--mt SIZE ...] [--finetune SIZE:TASK ...] [--updates 2]
                                   [--examples 64] [--sentences 8] [--root DIR] [--keep]

Data first, once per ROOT: the data rehearsal's synthetic WikiText-103, MNLI and WMT'14 (bench/synthetic.py) at
scale DATA_SCALE with the paper profile's 32k and 40k vocabularies (bench/rehearsal.py), and the real SST-2.
Then, in ROOT/work (this checkout's stages and lib, params.yaml with profiles/paper.yaml and the few changes
below), each stage as a user's run calls it, `python -m stages.<stage> ...`, measured like the data stages
(wall time, peak RSS of the process tree, disk): pretrain of every --mlm size, finetune of each --finetune
pair, train_mt of every --mt size, each for --updates updates at the paper's batch shapes scaled to fit this
machine (BATCH: a paper batch's step of L24-H768 takes minutes on 2 cores); then compress with the paper
profile's full grid (10 sparsities x fp32 and 4/6/8 bits, ONNX fp32, int8 and int4 at sparsity 0) and evaluate
with the dev and test sets capped at --examples / --sentences.

Projected to the paper profile as configured: training takes its budget (wall clock, on any machine);
compress takes what it took here (CPU work, the same on a GPU node's CPU), its full grid projected from a run of
part of it (full_grid_compress); evaluate's scoring seconds per variant (the stage logs each variant's seconds
and, apart, its timing's) are scaled to the paper's caps (with
the variant's loading: an upper bound) and its timing, on a fixed sample, kept as measured; on this CPU, and on
a GPU node where every fairseq variant scores on the GPU (evaluate.device), costing its loading (measured here,
load_variant) plus its forward passes at a third of an H100's bf16 peak (bench/loader.py), and the ONNX models
on all its cores (evaluate.scoring_threads auto), while the timings still run on evaluate.threads as here.
Bytes: each output's size, and each pruned variant's weights file against its bytes_zip (target <= 1.5x); the
DVC cache keeps one more copy of every output (cache.type copy, DVC's default without reflinks). Every run of the
profile (profile_runs) is projected, those not rehearsed scaled from the nearest rehearsed model of their kind
(run_projection), and summed with the data's full-size bytes into the profile's total disk (profile_projection).

Results merge into reports/rehearsal-models.json (one entry per stage and model: a later run replaces it) and
reports/rehearsal-models.md is rendered from all entries.
"""
import argparse
import contextlib
import csv
import os
import json
import math
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench import rehearsal
from bench.loader import ASSUMED_MFU, GPU_NODE_CORES, H100_BF16_FLOPS
from bench.report import check, paper_params, table, verdict
from lib.variants import ONNX_FORMATS, is_onnx

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "reports" / "rehearsal-models.json"
DATA_SCALE = 0.01            # enough text for the paper's vocabularies; the models see a few batches of it
BATCH = {"pretrain": 4096, "train_mt": 2048, "finetune": 8}  # tokens (sentences for finetune) a batch here
PAPER_BATCH = {"pretrain": "65,536 tokens", "train_mt": "16,384 tokens", "finetune": "32 sentences"}
PEAK_RSS_TARGET_MB = 32_000  # issue 32: no model stage above 32 GB at paper size
DISK_RATIO_TARGET = 1.5      # a pruned variant's bytes on disk / its bytes_zip
REAL_MIRROR = Path(os.environ.get("DATA_MIRROR", REPO.parent / "shared" / "data"))  # SST-2 is real
# compress's phases, from its console: the first sparsity (its fairseq variants and the ONNX models), each later
# sparsity's fairseq variants, then the bytes_zip of every variant (computed alongside, waited for at the end)
COMPRESS_STEPS = [("first sparsity", ""), ("other sparsities", r"\[1/\d+\] sparsity"),
                  ("bytes_zip", r"\[(\d+)/\1\] sparsity")]
VARIANT_LINE = re.compile(r"evaluate \S+: \[\d+/\d+\] (\S+): .*\(([\d.]+) s, timing ([\d.]+) s\)$")


def rehearsal_params(updates: int, examples: int, sentences: int) -> dict:
    """params.yaml with the paper profile, CPU training for `updates` updates at BATCH, capped evaluation."""
    p = paper_params()
    p["training"].update(device="cpu", precision="auto", world_size=1, loader_workers="auto")
    for stage in ("pretrain", "finetune", "train_mt"):
        p[stage]["recipe"].update(budget={"seconds": None, "updates": updates}, validate_every=updates,
                                  valid_batches=1, warmup_updates=1)
    p["pretrain"]["recipe"]["max_tokens"] = BATCH["pretrain"]
    p["train_mt"]["recipe"]["max_tokens"] = BATCH["train_mt"]
    p["finetune"]["recipe"]["batch_size"] = BATCH["finetune"]
    p["compress"]["int8_check_examples"] = min(p["compress"]["int8_check_examples"], examples)
    p["evaluate"].update(max_dev_examples=examples, max_test_sentences=sentences, device="cpu")
    return p


def set_values(params: dict, assignments: list[str]) -> dict:
    """`KEY=VALUE` assignments (dotted keys, YAML values) applied to `params`, as `dvc exp run -S` would."""
    for assignment in assignments:
        key, _, value = assignment.partition("=")
        *parents, last = key.split(".")
        node = params
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = yaml.safe_load(value)
    return params


def prepare_data(root: Path, logs: Path, scale: float, datasets: set) -> Path:
    """ROOT/work with the paper profile's binarized data of `datasets` (each made once per ROOT, or by `python -m
    bench.rehearsal data --keep` there): synthetic WikiText-103, MNLI and WMT'14 at `scale` through fetch and
    prepare, and the real SST-2 from the mirror."""
    work = root / "work"
    outputs = {"wikitext103": "data/bin/mlm", "mnli": "data/bin/glue/mnli", "wmt14_en_fr": "data/bin/mt"}
    for dataset, output in outputs.items():  # a data rehearsal run with --keep in ROOT made them already
        if dataset in datasets and not (work / output).exists():
            rehearsal.rehearse(dataset, scale, root, logs, keep_outputs=True)
    if "sst2" not in datasets or (work / "data/bin/glue/sst2").exists():
        return work
    (root / "mirror" / "sst2").unlink(missing_ok=True)
    (root / "mirror" / "sst2").symlink_to(REAL_MIRROR / "sst2")
    for cmd in (["stages.fetch", "sst2"], ["stages.prepare_glue", "sst2"]):
        result = rehearsal.measure([sys.executable, "-m", *cmd], work, rehearsal.stage_env(work),
                                   logs / f"{'-'.join(cmd)}.log")
        if result["rc"] != 0:
            raise SystemExit(f"rehearsal: {' '.join(cmd)} failed; its log: {result['log']}")
    return work


def run_stage(work: Path, logs: Path, stage: str, args: list, outputs: list) -> dict:
    """One stage, measured; its outputs' bytes. Exits with the log's tail when the stage fails."""
    name = " ".join([stage, *args])
    print(f"[rehearsal] {name}", flush=True)
    result = rehearsal.measure([sys.executable, "-m", f"stages.{stage}", *args], work, rehearsal.stage_env(work),
                               logs / f"{stage}-{'-'.join(args)}.log")
    lines = result.pop("lines")
    if result["rc"] != 0:
        tail = "\n".join(line for _, line in lines[-15:])
        raise SystemExit(f"rehearsal: {name} failed (exit {result['rc']}); its log: {result['log']}\n{tail}")
    result |= {"stage": stage, "args": args, "output_bytes": sum(rehearsal.dir_bytes(work / o) for o in outputs)}
    if stage == "compress":
        result["steps"] = rehearsal.step_times(lines, COMPRESS_STEPS, result["wall_s"])
    if stage == "evaluate":
        matches = [m for _, line in lines if (m := VARIANT_LINE.search(line))]
        result["variant_seconds"] = {m.group(1): float(m.group(2)) for m in matches}
        result["timing_seconds"] = {m.group(1): float(m.group(3)) for m in matches}
    print(f"[rehearsal]   {result['wall_s']} s, peak RSS {result['peak_rss_mb']} MB, "
          f"output {result['output_bytes'] / 1e9:.2f} GB", flush=True)
    return result


def variant_bytes(compressed: Path) -> list:
    """Each variant's bytes on disk (every file but variant.json) against its bytes_zip."""
    rows = []
    for described in sorted(compressed.glob("*/variant.json")):
        v = json.loads(described.read_text())
        on_disk = sum(f.stat().st_size for f in described.parent.rglob("*") if f.is_file() and f.name != "variant.json")
        rows.append({"variant": v["variant"], "format": v["format"], "sparsity": v["target_sparsity"],
                     "bits": v["bits"], "disk_bytes": on_disk, "bytes_zip": v["bytes_zip"],
                     "ratio": round(on_disk / v["bytes_zip"], 3)})
    return rows


def load_seconds(work: Path, compressed: Path) -> dict:
    """Seconds load_variant takes for the most sparse fp32 and 4-bit variants: a variant's cost on any device."""
    from lib.variant_weights import load_variant
    timed = {}
    for name in ("s0.90-fp32", "s0.90-q4"):
        if (compressed / name).is_dir():
            start = time.time()
            with contextlib.chdir(work):  # variant.json names its source relative to the workspace
                load_variant(compressed / name)
            timed[name] = round(time.time() - start, 2)
    return timed


def model_runs(work: Path, logs: Path, kind: str, size: str, task: str | None, params: dict,
               compressed: bool = True, evaluated: bool = True) -> list:
    """Training, compress and evaluate of one model (training only unless `compressed`, no evaluate unless
    `evaluated`); its checkpoints and variants removed afterwards."""
    if kind == "mt":
        train = run_stage(work, logs, "train_mt", [size], [f"models/mt/{size}"])
        model, args, source = f"mt-{size}", ["mt", size], f"models/mt/{size}"
    else:
        train = run_stage(work, logs, "finetune", [size, task], [f"models/finetune/{size}-{task}"])
        model, args, source = f"{size}-{task}", ["glue", size, task], f"models/finetune/{size}-{task}"
    if not compressed:
        shutil.rmtree(work / source, ignore_errors=True)
        return [{**train, "model": model, "size": size, "kind": kind, "dims": params["models"][kind][size]}]
    compress = run_stage(work, logs, "compress", args, [f"models/compressed/{model}"])
    compress["variants"] = variant_bytes(work / "models/compressed" / model)
    compress["load_seconds"] = load_seconds(work, work / "models/compressed" / model)
    runs = [train, compress]
    if evaluated:
        evaluate = run_stage(work, logs, "evaluate", args,
                             [f"reports/eval/{model}.csv", f"reports/predictions/{model}"])
        evaluate["examples"] = params["evaluate"]["max_test_sentences" if kind == "mt" else "max_dev_examples"]
        evaluate["load_seconds"] = compress["load_seconds"]  # what a variant costs before it is scored, anywhere
        with open(work / f"reports/eval/{model}.csv") as f:  # dev splits (MNLI: matched and mismatched)
            evaluate["splits"] = len({row["split"] for row in csv.DictReader(f)})
        runs.append(evaluate)
    shutil.rmtree(work / "models/compressed" / model, ignore_errors=True)
    shutil.rmtree(work / source, ignore_errors=True)
    return [{**r, "model": model, "size": size, "kind": kind, "dims": params["models"][kind][size]} for r in runs]


def rehearse(args, root: Path, logs: Path, save=lambda entries: None) -> list:
    """Every stage the arguments ask for; `save(entries so far)` after each model, so a rehearsal stopped
    half-way keeps what it measured."""
    tasks = {pair.split(":")[1] for pair in args.finetune}
    work = prepare_data(root, logs, args.data_scale, {"wikitext103"} | tasks | ({"wmt14_en_fr"} if args.mt else set()))
    rehearsal.copy_code(work)  # this checkout's code, whatever made the data
    params = set_values(rehearsal_params(args.updates, args.examples, args.sentences), args.set)
    # the sizes rehearsed (a grid left empty keeps the profile's, which params.yaml must name, and runs none)
    params["pretrain"]["sizes"] = args.mlm or params["pretrain"]["sizes"]
    params["finetune"]["random_init_sizes"] = [s for s in params["finetune"]["random_init_sizes"] if s in args.mlm]
    params["train_mt"]["sizes"] = args.mt or params["train_mt"]["sizes"]
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    entries = []
    for size in args.mlm:
        entries.append({**run_stage(work, logs, "pretrain", [size], [f"models/pretrain/{size}"]),
                        "model": size, "size": size, "kind": "mlm", "dims": params["models"]["mlm"][size]})
        save(entries)
        for pair in args.finetune:
            if pair.split(":")[0] == size:
                entries += model_runs(work, logs, "mlm", size, pair.split(":")[1], params,
                                      evaluated=not args.no_evaluate)
                save(entries)
        shutil.rmtree(work / "models/pretrain" / size, ignore_errors=True)
    for size in args.mt:
        entries += model_runs(work, logs, "mt", size, None, params,
                              compressed=args.mt_compress is None or size in args.mt_compress,
                              evaluated=not args.no_evaluate)
        save(entries)
    return entries


# ---------------------------------------------------------------- projections and the report

def grid_counts(p: dict) -> tuple[int, int]:
    """(fairseq variants, ONNX models) that compress makes of one model with `p`'s grid."""
    grid = p["compress"]
    return len(grid["sparsities"]) * (1 + len(grid["bits"])), len(grid["onnx_sparsities"]) * len(ONNX_FORMATS)


def forward_flops(entry: dict, p: dict) -> float:
    """FLOPs of scoring one evaluated example at paper length: 2 N per token (forward), ~40 tokens a GLUE
    example, a translation's ~30 source tokens through the encoder and its beam's tokens through the decoder."""
    from lib.model_size import non_embedding_params
    from lib.schema import ModelSize
    size = ModelSize(**entry["dims"])
    if entry["kind"] == "mt":
        beam = p["evaluate"]["beam"]
        return 2 * 30 * (non_embedding_params(size) + beam * non_embedding_params(size, decoder=True)
                         + beam * size.hidden * p["prepare_mt"]["vocab_size"])
    return 2 * 40 * non_embedding_params(size)


def evaluation_projection(entry: dict, p: dict) -> dict:
    """Seconds of evaluate at the paper's caps and the paper's grid, all on this CPU and on a GPU node. A variant's
    seconds here are its scoring (with its loading: scaled to the cap, an upper bound) plus its timing (on a fixed
    sample: as measured). Variants of the paper's grid not run here (a rehearsal may compress fewer) count at the
    mean of those of their kind that ran. On a GPU node every fairseq variant is scored on the GPU (loading plus
    forward FLOPs), the ONNX models on all GPU_NODE_CORES cores (scoring_threads auto: assumed linear in cores,
    from the cores that scored them here), and the deployment formats timed on the CPU as here."""
    cap = p["evaluate"]["max_test_sentences" if entry["kind"] == "mt" else "max_dev_examples"]
    scale, seconds = cap / entry["examples"], entry["variant_seconds"]
    timing = entry.get("timing_seconds", {})
    scoring = {v: (seconds[v] - timing.get(v, 0.0)) * scale for v in seconds}
    fairseq_grid, onnx_grid = grid_counts(p)
    kinds = {"fairseq": ([v for v in seconds if "onnx" not in v], fairseq_grid),
             "onnx": ([v for v in seconds if "onnx" in v], onnx_grid)}
    cpu = {k: sum(scoring[v] for v in ran) / len(ran) * paper for k, (ran, paper) in kinds.items() if ran}
    load = max(entry.get("load_seconds", {}).values(), default=0.0)
    gpu_each = load + cap * entry.get("splits", 1) * forward_flops(entry, p) / (H100_BF16_FLOPS * ASSUMED_MFU)
    onnx_gpu_node = cpu.get("onnx", 0.0) * entry["machine"]["cores"] / GPU_NODE_CORES
    timed = sum(timing.values())
    fairseq_paper = kinds["fairseq"][1]
    # seconds to the hundredth: a tiny model's projection is a fraction of a second (the tables show minutes)
    return {"cap": cap, "cpu_s": round(sum(cpu.values()) + timed, 2),
            "gpu_node_s": round(fairseq_paper * gpu_each + onnx_gpu_node + timed, 2), "timing_s": round(timed, 2),
            "onnx_scoring_gpu_node_s": round(onnx_gpu_node, 2), "fairseq_variants": fairseq_paper,
            "fairseq_each_on_gpu_s": round(gpu_each, 2),
            "variants_measured": f"{len(seconds)} of {sum(paper for _, paper in kinds.values())}"}


# ---------------------------------------------------------------- the paper profile as configured, projected

def fairseq_variants(entry: dict) -> list:
    return [v for v in entry["variants"] if not is_onnx(v["format"])]


def grid_point(variant: dict) -> tuple:
    return round(variant["sparsity"], 2), variant["bits"]


def bytes_ratios(entries: list, p: dict, points: set) -> dict:
    """Per compress entry that ran the full grid: its fairseq variants' bytes on disk over those of the variants
    at `points` (sparsity, bits) alone."""
    ratios = {}
    for e in entries:
        if e["stage"] == "compress" and len(fairseq_variants(e)) >= grid_counts(p)[0]:
            part = sum(v["disk_bytes"] for v in fairseq_variants(e) if grid_point(v) in points)
            if part:
                ratios[e["model"]] = sum(v["disk_bytes"] for v in fairseq_variants(e)) / part
    return ratios


def full_grid_compress(entry: dict, entries: list, p: dict) -> dict:
    """Seconds and bytes of compress with the paper's full grid, from a run of part of it (a compress entry).
    Bytes: the ONNX models as made (the grid's ONNX sparsities are run whole), the fairseq variants' bytes times
    the mean ratio of all fairseq variants' bytes to those at the same (sparsity, bits) points in the runs of the
    full grid (bytes_ratios). Seconds: the first sparsity as run (its ONNX models included), every fairseq
    variant not run at the per-variant rate of the later sparsities, and the wait for bytes_zip scaled by the
    number of variants (the "steps" of its console, COMPRESS_STEPS): an upper bound, since most zips run alongside
    the later sparsities (checked once, the L6-H1536 translator: 2,488 s projected from 7 variants, 1,924 s
    measured; bytes 20.45 against 20.41 GB)."""
    fairseq, (fairseq_grid, onnx_grid) = fairseq_variants(entry), grid_counts(p)
    if len(fairseq) >= fairseq_grid:
        return {"seconds": entry["wall_s"], "bytes": entry["output_bytes"], "how": "measured"}
    ratios = bytes_ratios(entries, p, {grid_point(v) for v in fairseq})
    fairseq_bytes = sum(v["disk_bytes"] for v in fairseq)
    projected = {"bytes": None, "seconds": None,
                 "how": f"{len(entry['variants'])} variants run; bytes scaled as in "
                        f"{', '.join(ratios) or 'no full-grid run'}"}
    if ratios:
        projected["bytes"] = (entry["output_bytes"] - fairseq_bytes
                              + fairseq_bytes * sum(ratios.values()) / len(ratios))
    steps, first = entry.get("steps"), min(v["sparsity"] for v in fairseq)
    at_first = sum(v["sparsity"] == first for v in fairseq)
    if steps and len(fairseq) > at_first:
        rate = steps["other sparsities"] / (len(fairseq) - at_first)
        projected["seconds"] = round(steps["first sparsity"] + rate * (fairseq_grid - at_first)
                                     + steps["bytes_zip"] * (fairseq_grid + onnx_grid) / len(entry["variants"]), 1)
    return projected


def profile_runs(p: dict) -> list:
    """Every training, compress and evaluate run the paper profile makes (its dvc.yaml stages' items)."""
    runs = [{"stage": "pretrain", "model": s, "size": s, "kind": "mlm"} for s in p["pretrain"]["sizes"]]
    glue = [(s, t, "") for s in p["pretrain"]["sizes"] for t in p["data"]["glue_tasks"]]
    glue += [(s, t, "-random") for s in p["finetune"]["random_init_sizes"] for t in p["data"]["glue_tasks"]]
    for size, task, random in glue:
        runs += [{"stage": stage, "model": f"{size}-{task}{random}", "size": size, "kind": "mlm", "task": task,
                  "random": bool(random)} for stage in ("finetune", "compress", "evaluate")]
    for size in p["train_mt"]["sizes"]:
        runs += [{"stage": stage, "model": f"mt-{size}", "size": size, "kind": "mt"}
                 for stage in ("train_mt", "compress", "evaluate")]
    return runs


def run_projection(run: dict, entries: list, p: dict) -> dict:
    """One run of the paper profile: seconds on a GPU node and on this machine, output bytes, and how they were
    found. Training takes its budget anywhere. Compress and evaluate: as rehearsed (full_grid_compress,
    evaluation_projection), or, for a model not rehearsed, scaled from the rehearsed model of its kind (for
    evaluate, of its task first) nearest in trained-model bytes, in proportion to those bytes. A random-init
    control is compressed and evaluated dense only: one variant's share of its pretrained twin's figures."""
    measured = {(e["stage"], e["model"]): e for e in entries}
    trained = {e["size"] if e["stage"] == "pretrain" else e["model"]: e["output_bytes"] for e in entries
               if e["stage"] in ("pretrain", "train_mt")}
    model_bytes = trained.get(run["size"] if run["kind"] == "mlm" else run["model"])
    training = run["stage"] in ("pretrain", "finetune", "train_mt")
    budget = p[run["stage"]]["recipe"]["budget"]["seconds"] if training else None
    if model_bytes is None:  # its size never trained here: nothing to scale from
        return {"gpu_node_s": budget, "here_s": budget, "bytes": None, "how": "size not rehearsed"}
    if training:
        e = measured.get((run["stage"], run["model"]))
        return {"gpu_node_s": budget, "here_s": budget, "bytes": e["output_bytes"] if e else model_bytes,
                "how": "its budget" + ("" if e else "; bytes: the pretrained model's")}

    def figures(e):
        if run["stage"] == "compress":
            full = full_grid_compress(e, entries, p)
            return full["seconds"], full["seconds"], full["bytes"], full["how"]
        x = evaluation_projection(e, p)
        return x["gpu_node_s"], x["cpu_s"], e["output_bytes"], "scaled to the paper's caps"

    twin = run["model"].removesuffix("-random")
    if (run["stage"], twin) in measured:
        gpu, here, out, how = figures(measured[(run["stage"], twin)])
        scale = 1.0
    else:
        of_kind = [e for e in entries if e["stage"] == run["stage"] and e["kind"] == run["kind"]]
        # evaluate: the same task first (MNLI scores two dev splits); compress does not depend on the task
        rehearsed = [e for e in of_kind if run["stage"] == "compress"
                     or e["model"].endswith(f"-{run.get('task')}")] or of_kind
        own = lambda e: trained.get(e["size"] if e["kind"] == "mlm" else e["model"])  # noqa: E731
        rehearsed = [e for e in rehearsed if own(e)]
        if not rehearsed:
            return {"gpu_node_s": None, "here_s": None, "bytes": None, "how": f"no {run['stage']} rehearsed"}
        nearest = min(rehearsed, key=lambda e: abs(math.log(own(e) / model_bytes)))
        gpu, here, out, how = figures(nearest)
        scale = model_bytes / own(nearest)
        how = f"scaled from {nearest['model']} by model bytes"
    if run.get("random"):
        scale /= sum(grid_counts(p))
        how += "; dense only"
    times = lambda x: None if x is None else x * scale  # noqa: E731
    return {"gpu_node_s": times(gpu), "here_s": times(here), "bytes": times(out), "how": how}


def profile_projection(entries: list, p: dict, data_bytes: float | None) -> dict:
    """The paper profile's runs, projected (run_projection), summed per stage, and its total disk: every output
    (models, variants, evaluation reports) plus the data (the data rehearsal's full-size outputs), in the workspace
    and again in the DVC cache."""
    rows = [{**run, **run_projection(run, entries, p)} for run in profile_runs(p)]
    rehearsed = {(e["stage"], e["model"]): e for e in entries}
    stages = {}
    for r in rows:
        s = stages.setdefault(r["stage"], {"runs": 0, "rehearsed": 0, "gpu_node_h": 0.0, "here_h": 0.0, "bytes": 0.0,
                                             "peak_rss_mb": 0, "unknown": 0})
        s["runs"] += 1
        if (e := rehearsed.get((r["stage"], r["model"]))) is not None:
            s["rehearsed"] += 1
            s["peak_rss_mb"] = max(s["peak_rss_mb"], e["peak_rss_mb"] or 0)
        if None in (r["gpu_node_s"], r["here_s"], r["bytes"]):
            s["unknown"] += 1
            continue
        s["gpu_node_h"] += r["gpu_node_s"] / 3600
        s["here_h"] += r["here_s"] / 3600
        s["bytes"] += r["bytes"]
    outputs = sum(s["bytes"] for s in stages.values())
    return {"runs": rows, "stages": stages, "outputs_bytes": outputs, "data_bytes": data_bytes,
            "scratch_bytes": max((e.get("peak_disk_bytes") or 0 for e in entries), default=0),
            "total_bytes": outputs + (data_bytes or 0)}


def targets(entries: list) -> list:
    rows = []
    for e in entries:
        rows.append({"name": f"{e['stage']} {e['model']}: peak RSS (MB)", "value": e["peak_rss_mb"],
                     **check(e["peak_rss_mb"], "<=", PEAK_RSS_TARGET_MB,
                             f"batch {BATCH[e['stage']]}" if e["stage"] in BATCH else "")})
        if e["stage"] == "compress":
            pruned = [v for v in fairseq_variants(e) if v["sparsity"] > 0]
            worst = max(pruned, key=lambda v: v["ratio"], default=None)
            if worst:
                rows.append({"name": f"compress {e['model']}: worst pruned variant's disk / bytes_zip "
                                     f"({worst['variant']})", "value": worst["ratio"],
                             **check(worst["ratio"], "<=", DISK_RATIO_TARGET)})
    p = paper_params()
    for e in entries:
        if e["stage"] == "evaluate" and e["kind"] == "mlm" and e["size"] == "L24-H768" and "mnli" in e["model"]:
            minutes = evaluation_projection(e, p)["gpu_node_s"] / 60
            rows.append({"name": f"evaluate {e['model']} at the paper caps on a GPU node (minutes, projected)",
                         "value": round(minutes, 1), **check(minutes, "<=", 30)})
    return rows


def markdown(report: dict) -> str:
    p, entries = paper_params(), report["entries"]
    machines = sorted({f"{e['machine']['cpu']}, {e['machine']['cores']} cores, {e['machine']['memory_gb']} GB"
                       for e in entries})
    out = ["# Rehearsal of the paper profile's model stages\n",
           f"Every stage of the paper profile's models at their real sizes (`python -m bench.rehearsal models`; "
           f"bench/rehearsal_models.py says how), on {'; '.join(machines)}. Training ran a few updates at batches "
           f"scaled to this machine ({', '.join(f'{k} {v}' for k, v in BATCH.items())}; the paper's: "
           f"{', '.join(f'{k} {v}' for k, v in PAPER_BATCH.items())}); compress the paper's full grid, or part of it "
           "(projected to the full grid below); evaluate capped, then scaled to the paper's caps.\n",
           "## Targets\n",
           table(["target", "value", "goal", "verdict (margin)"],
                 [[t["name"], t["value"], t["goal"], verdict(t)] for t in report["targets"]]),
           "\n## Stages\n",
           table(["stage", "model", "wall s", "peak RSS MB", "largest process MB", "peak disk GB", "output GB",
                  "output + DVC cache GB"],
                 [[e["stage"], e["model"], "stopped" if e["wall_s"] is None else e["wall_s"],
                   "" if e["peak_rss_mb"] is None else e["peak_rss_mb"], e.get("peak_process_rss_mb") or "",
                   "" if e.get("peak_disk_bytes") is None else round(e["peak_disk_bytes"] / 1e9, 2),
                   round(e["output_bytes"] / 1e9, 3), round(2 * e["output_bytes"] / 1e9, 3)] for e in entries])]
    evaluations = [(e, evaluation_projection(e, p)) for e in entries if e["stage"] == "evaluate"]
    out += ["\n## Evaluation at the paper's caps, projected\n",
            f"A GPU node: fairseq variants scored on the GPU, ONNX models on {GPU_NODE_CORES} cores (linear in cores, "
            "assumed), the deployment formats timed on the CPU on evaluate.threads as here "
            "(bench/rehearsal_models.py evaluation_projection).\n",
            table(["model", "examples run (a split)", "paper cap", "this CPU (min)", "GPU node (min)",
                   "of which timing (min)", f"ONNX scoring on {GPU_NODE_CORES} cores (min)", "fairseq variants",
                   "each on the GPU (s)", "load_variant (s)", "variants measured"],
                  [[e["model"], e["examples"], x["cap"], round(x["cpu_s"] / 60, 1), round(x["gpu_node_s"] / 60, 1),
                    round(x["timing_s"] / 60, 1), round(x["onnx_scoring_gpu_node_s"] / 60, 1), x["fairseq_variants"],
                    x["fairseq_each_on_gpu_s"], ", ".join(f"{k} {v}" for k, v in e.get("load_seconds", {}).items()),
                    x["variants_measured"]] for e, x in evaluations])]
    compressions = [(e, sorted(v["ratio"] for v in fairseq_variants(e) if v["sparsity"] > 0))
                    for e in entries if e["stage"] == "compress"]
    out += ["\n## Variant bytes on disk against bytes_zip (pruned fairseq variants)\n",
            table(["model", "variants (all)", "disk GB (all variants)", "pruned fairseq variants", "worst ratio",
                   "median ratio"],
                  [[e["model"], len(e["variants"]), round(sum(v["disk_bytes"] for v in e["variants"]) / 1e9, 2),
                    len(r), r[-1] if r else "", r[len(r) // 2] if r else ""] for e, r in compressions])]
    out += profile_markdown(entries, p)
    rebuilt = [f"{e['stage']} {e['model']} ({e['from']})" for e in entries if e.get("from")]
    if rebuilt:
        out += ["\nRebuilt from the logs of a stopped run (no disk or largest-process figures): " + "; ".join(rebuilt)]
    return "\n".join(out) + "\n"


def data_bytes() -> float | None:
    """The paper data's outputs at full size (fetch and prepare), from the data rehearsal's report."""
    if not rehearsal.OUT.exists():
        return None
    return sum(row[-1] for row in rehearsal.full_size(json.loads(rehearsal.OUT.read_text())["entries"])) * 1e9


def profile_markdown(entries: list, p: dict) -> list:
    x = profile_projection(entries, p, data_bytes())
    fairseq_grid, onnx_grid = grid_counts(p)
    gb = lambda b: round(b / 1e9, 1)  # noqa: E731
    compressions = [(e, full_grid_compress(e, entries, p)) for e in entries if e["stage"] == "compress"]
    out = ["\n## Compress with the paper's full grid\n",
           f"{fairseq_grid} fairseq variants and {onnx_grid} ONNX models a model. Where a rehearsal ran part of the "
           "grid: bytes and seconds projected by bench/rehearsal_models.py full_grid_compress (the ONNX models as "
           "made; the fairseq variants' bytes in the proportion the full-grid runs show; seconds from the stage's "
           "phases: the first sparsity as run, each further variant at the rate of the later ones, the bytes_zip "
           "wait in proportion to the variants).\n",
           table(["model", "variants run", "wall s (run)", "output GB (run)", "full grid: s", "full grid: GB", "how"],
                 [[e["model"], len(e["variants"]), e["wall_s"], gb(e["output_bytes"]), f.get("seconds") or "",
                   "" if f.get("bytes") is None else gb(f["bytes"]), f["how"]] for e, f in compressions]),
           "\n## The paper profile as configured, projected\n",
           "Every run its dvc.yaml makes with profiles/paper.yaml (bench/rehearsal_models.py profile_runs), one "
           "after another: training takes its budget on any machine; compress and evaluate as rehearsed above, and "
           "for a model not rehearsed, scaled from the rehearsed one of its kind nearest in model bytes, in "
           "proportion to those bytes (run_projection; the random-init controls are compressed and evaluated dense "
           "only). Compress is CPU work on either machine.\n",
           table(["stage", "runs", "rehearsed", "GPU node (h)", "this machine (h)", "outputs GB",
                  "outputs + DVC cache GB", "largest peak RSS MB (rehearsed)"],
                 [[stage, s["runs"], s["rehearsed"], round(s["gpu_node_h"], 1), round(s["here_h"], 1), gb(s["bytes"]),
                   gb(2 * s["bytes"]), s["peak_rss_mb"] or ""] for stage, s in x["stages"].items()]
                 + [["all", sum(s["runs"] for s in x["stages"].values()),
                     sum(s["rehearsed"] for s in x["stages"].values()),
                     round(sum(s["gpu_node_h"] for s in x["stages"].values()), 1),
                     round(sum(s["here_h"] for s in x["stages"].values()), 1), gb(x["outputs_bytes"]),
                     gb(2 * x["outputs_bytes"]), max(s["peak_rss_mb"] for s in x["stages"].values())]])]
    unknown = sum(s["unknown"] for s in x["stages"].values())
    data = ("the data not measured (run `python -m bench.rehearsal data`)" if x["data_bytes"] is None else
            f"the data's {gb(x['data_bytes'])} GB (reports/rehearsal-data.md, at full size)")
    out += [f"\n**Disk, the paper profile in all: {gb(x['total_bytes'])} GB in the workspace** (every output above "
            f"plus {data}), **{gb(2 * x['total_bytes'])} GB with the DVC cache's copy** (cache.type copy, DVC's "
            f"default without reflinks; a reflink or hardlink cache keeps one copy). While a stage runs, its scratch "
            f"(checkpoints with optimizer state, the variants before they are moved) needs up to "
            f"{gb(x['scratch_bytes'])} GB more (the largest peak measured here), per stage running at once."
            + (f" {unknown} runs could not be projected (their size not rehearsed, or a compress run without its "
               "phases): not in these sums." if unknown else "")]
    return out


def merge_entries(old: list, new: list) -> list:
    key = lambda e: (e["stage"], e["model"])  # noqa: E731
    keys = {key(e) for e in new}
    return [e for e in old if key(e) not in keys] + new


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m bench.rehearsal models", description=__doc__.split("\n\n")[0])
    grid = paper_params()
    p.add_argument("--mlm", nargs="*", default=list(grid["pretrain"]["sizes"]), help="masked-LM sizes to pretrain")
    p.add_argument("--finetune", nargs="*", default=["L6-H256:mnli", "L24-H768:mnli", "L6-H1536:sst2"],
                   metavar="SIZE:TASK", help="fine-tunings, then compressed and evaluated (of --mlm sizes)")
    p.add_argument("--mt", nargs="*", default=list(grid["train_mt"]["sizes"]), help="translation sizes")
    p.add_argument("--mt-compress", nargs="*", metavar="SIZE",
                   help="the --mt sizes also compressed and evaluated (default: all)")
    p.add_argument("--no-evaluate", action="store_true",
                   help="stop each model after compress (e.g. to measure compress's full grid alone)")
    p.add_argument("--updates", type=int, default=2, help="updates a training run (default 2)")
    p.add_argument("--examples", type=int, default=64, help="GLUE dev examples evaluated (paper cap: 2000)")
    p.add_argument("--sentences", type=int, default=8, help="test sentences translated (paper cap: 500)")
    p.add_argument("--data-scale", type=float, default=DATA_SCALE,
                   help=f"scale of the synthetic corpora (default {DATA_SCALE})")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="params of the rehearsal's workspace changed (dotted keys, YAML values), e.g. "
                        "'compress.sparsities=[0.0,0.9]'")
    p.add_argument("--root", type=Path, help="scratch directory (default: a new one in the system's temp dir)")
    p.add_argument("--keep", action="store_true", help="keep ROOT afterwards (its data serves the next run)")
    p.add_argument("--record", nargs="*", metavar="STAGE",
                   help="only these stages' entries replace the report's (default: all), e.g. `--record evaluate` "
                        "with a smaller --set compress grid keeps the report's full-grid compress entry")
    p.add_argument("--out", type=Path, default=OUT)
    return p.parse_args(argv)


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    root = args.root or Path(tempfile.mkdtemp(prefix="rehearsal-models-"))

    def run(logs, started):
        stamp = lambda entries: [{**e, "machine": rehearsal.machine(), "when": started} for e in entries  # noqa: E731
                                 if args.record is None or e["stage"] in args.record]
        return stamp(rehearse(args, root, logs, lambda entries: rehearsal.write_report(
            args.out, started, stamp(entries), merge_entries, targets, markdown)))

    rehearsal.run_and_report(root, args.keep, args.out, run, merge_entries, targets, markdown)
