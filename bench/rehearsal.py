"""Rehearsal of the paper profile's data stages on synthetic corpora of the real sizes, on this machine.

  python -m bench.rehearsal data [--scale S] [--datasets wikitext103 mnli wmt14_en_fr] [--root DIR] [--keep]
  python -m bench.rehearsal models ...: the model stages at the paper's sizes (bench/rehearsal_models.py)

Writes the synthetic datasets (bench/synthetic.py: real line counts and layouts at scale 1) into ROOT/mirror,
checksums them into a scratch catalog, and runs the paper profile's fetch and prepare stages on them in
ROOT/work exactly as a user's run with DATA_MIRROR would: `python -m stages.fetch DATASET` and
`python -m stages.prepare_*` of this checkout, with params.yaml merged with profiles/paper.yaml. For each
stage: wall time, the share of each step (from the stage's own log lines), peak RSS (sampled over the stage
process and its children: fairseq-preprocess's workers), the largest single process, the disk the stage used
at its peak (scratch included) and the bytes of its output. Then sentencepiece's encoding rate on 1 and 2
threads. Results merge into reports/rehearsal-data.json (one entry per dataset and scale: a later run at
the same scale replaces it) and reports/rehearsal-data.md is rendered from all entries.

ROOT defaults to a fresh directory in the system's temp directory, removed at the end (--keep keeps it):
full-size corpora are tens of GB; keep them out of the repository.
"""
import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

from bench import synthetic
from bench.report import check, paper_params, table, verdict

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "reports" / "rehearsal-data.json"
PEAK_RSS_TARGET_MB = 4000     # issue 31: no data stage above 4 GB at the paper's sizes
STAGES = {  # dataset -> the paper profile's stages that read it, in order
    "wikitext103": [["stages.fetch", "wikitext103"], ["stages.prepare_mlm"]],
    "mnli": [["stages.fetch", "mnli"], ["stages.prepare_glue", "mnli"]],
    "wmt14_en_fr": [["stages.fetch", "wmt14_en_fr"], ["stages.prepare_mt"]],
}
OUTPUTS = {"stages.fetch": "data/raw/{arg}", "stages.prepare_mlm": "data/bin/mlm",
           "stages.prepare_glue": "data/bin/glue/{arg}", "stages.prepare_mt": "data/bin/mt"}
# a step starts at the first log line matching its pattern and lasts until the next step starts
STEPS = {
    "stages.prepare_mlm": [("start-up and checks", r""), ("sentencepiece", r"sentencepiece: training"),
                           ("encoding and binarization", r"^encoding ")],
    "stages.prepare_mt": [("start-up and checks", r""), ("sentencepiece", r"sentencepiece: training"),
                          ("encoding and binarization", r"^encoding ")],
    "stages.prepare_glue": [("start-up, row checks and counts", r""), ("encoding and binarization", r"^encoding "),
                            ("labels (fairseq-preprocess)", r"^binarizing .* labels")],
}
LOG_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] (.*)$")


# ---------------------------------------------------------------- measuring one command

def cpu_times() -> list[int]:
    """The machine's CPU time counters (/proc/stat's first line: user ... steal), in clock ticks."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def steal_share(before: list[int], after: list[int]) -> float | None:
    """The share of CPU time the hypervisor gave other machines between two cpu_times(): a virtual machine's
    timings are that much slower than its cores' speed (seen: 50% on a 2-core VM)."""
    spent = [b - a for a, b in zip(before, after)]
    return round(spent[7] / sum(spent), 3) if sum(spent) else None


def measure(cmd: list, cwd: Path, env: dict, log: Path, interval: float = 0.2) -> dict:
    """Run `cmd`; sample the resident memory of it and its children every `interval` s and the free disk
    of `cwd`'s file system; time-stamp every output line (written to `log`); the CPU steal over the run."""
    disk0, times0 = shutil.disk_usage(cwd).free, cpu_times()
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"tree": 0, "process": 0, "disk": 0, "processes": 1}
    done = threading.Event()

    def sample():
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root] + root.children(recursive=True)
                rss = [p.memory_info().rss for p in procs]
            except psutil.Error:
                rss = []
            if rss:
                peak["tree"] = max(peak["tree"], sum(rss))
                peak["process"] = max(peak["process"], max(rss))
                peak["processes"] = max(peak["processes"], len(rss))
            peak["disk"] = max(peak["disk"], disk0 - shutil.disk_usage(cwd).free)
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lines = []
    with open(log, "w") as f:
        for line in proc.stdout:
            lines.append((time.time() - start, line.rstrip("\n")))
            f.write(f"{lines[-1][0]:.1f} {line}")
    rc = proc.wait()
    wall = time.time() - start
    done.set()
    sampler.join()
    return {"cmd": " ".join(cmd), "rc": rc, "wall_s": round(wall, 1), "load_1min_end": round(os.getloadavg()[0], 2),
            "cpu_steal": steal_share(times0, cpu_times()), "peak_rss_mb": round(peak["tree"] / 2**20),
            "peak_process_rss_mb": round(peak["process"] / 2**20), "processes": peak["processes"],
            "peak_disk_bytes": peak["disk"], "log": str(log), "lines": lines}


def step_times(lines: list, steps: list, wall: float) -> dict:
    """Seconds per step, a step running from the first of the stage's log lines matching its pattern
    (the first step from the start) to the next step's start."""
    starts = []
    for name, pattern in steps:
        t = 0.0 if not pattern else next((t for t, line in lines if (m := LOG_LINE.match(line))
                                          and re.search(pattern, m.group(1))), None)
        if t is not None:
            starts.append((name, t))
    starts.append(("end", wall))
    return {name: round(b - a, 1) for (name, a), (_, b) in zip(starts, starts[1:])}


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


# ---------------------------------------------------------------- the workspace

def make_workspace(root: Path, mirror: Path, datasets: list) -> Path:
    """ROOT/work: a copy of this checkout's stages and lib, params.yaml with the paper profile, and the catalog with
    the synthetic files' checksums in place of the real ones (URLs kept: the mirror is found first)."""
    from lib.files import file_digest
    work = root / "work"
    copy_code(work)
    params = paper_params()
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    catalog = yaml.safe_load((REPO / "datasets.yaml").read_text())
    for name in datasets:
        for fname, spec in catalog["datasets"][name]["files"].items():
            algorithm = "sha256" if "sha256" in spec else "md5"
            spec[algorithm] = file_digest(mirror / name / fname, algorithm)
    (work / "datasets.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
    return work


def copy_code(work: Path) -> None:
    """This checkout's stages and lib into WORK: a copy, so edits to the checkout while a rehearsal runs do not
    reach it."""
    work.mkdir(parents=True, exist_ok=True)
    for name in ("stages", "lib"):
        shutil.rmtree(work / name, ignore_errors=True)
        shutil.copytree(REPO / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))


def decompression_pass(work: Path, dataset: str) -> dict:
    """Seconds to read every split's source bytes once, decompressed, with nothing else done: the share of
    fetch that is decompression (fetch's own reading, with its line checks and writing, is the rest)."""
    from lib.params import load_params
    from lib.sources import member_name, open_bytes
    spec, mirror = load_params(work / "params.yaml").datasets[dataset], work.parent / "mirror" / dataset
    start, n = time.time(), 0
    for sources in spec.splits.values():
        for source in sources:
            for lang in spec.languages or [None]:
                fname, member = source.file.format(lang=lang) if lang else source.file, member_name(source, lang)
                stream, archive = open_bytes(mirror / fname, member)
                while chunk := stream.read(1 << 20):
                    n += len(chunk)
                stream.close()
                if archive is not None:
                    archive.close()
    return {"bytes": n, "seconds": round(time.time() - start, 1)}


def encoding_rate(work: Path, text: Path, model: Path, dictionary: Path, lines: int) -> dict:
    """Sentences per second of lib.binarize.binarize_columns (sentencepiece's encoding on 1 and 2 threads,
    the mapping to fairseq's ids and the writing) on the first `lines` non-blank lines of `text`."""
    import itertools
    import sentencepiece as spm
    from fairseq.data import Dictionary
    from lib.binarize import binarize_columns
    sp, d = spm.SentencePieceProcessor(model_file=str(model)), Dictionary.load(str(dictionary))
    with open(text) as f:
        rows = [(line.strip(),) for line in itertools.islice((x for x in f if x.strip()), lines)]
    rates = {}
    for threads in (1, 2):
        start = time.time()
        binarize_columns(sp, d, rows, [work / "rate"], threads=threads)
        rates[str(threads)] = round(len(rows) / (time.time() - start))  # str: JSON's keys
    return {"lines": len(rows), "sentences_per_s": rates, "speedup_2_threads": round(rates["2"] / rates["1"], 2)}


def stage_env(work: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(work), "DATA_MIRROR": str(work.parent / "mirror"),
            "PYTHONUNBUFFERED": "1"}


# ---------------------------------------------------------------- one dataset

def rehearse(dataset: str, scale: float, root: Path, logs: Path, keep_outputs: bool = False) -> dict:
    """Generate `dataset` at `scale` and run its stages in ROOT/work; its raw and binarized data are removed
    afterwards (tens of GB at full size) unless `keep_outputs` (the model rehearsal trains on them)."""
    mirror = root / "mirror"
    t = time.time()
    made = synthetic.DATASETS[dataset](mirror, scale)
    generated_s = time.time() - t
    files = {p.name: p.stat().st_size for p in synthetic.files_of(mirror, dataset)}
    work = make_workspace(root, mirror, [dataset])
    entry = {"dataset": dataset, "scale": scale, "machine": machine(), "generated_s": round(generated_s, 1),
             "files": files, "members": made, "stages": []}
    for cmd in STAGES[dataset]:
        module, arg = cmd[0], (cmd[1] if len(cmd) > 1 else "")
        name = module.removeprefix("stages.") + (f" {arg}" if arg else "")
        print(f"[rehearsal] {dataset} x{scale}: {name}", flush=True)
        result = measure([sys.executable, "-m", *cmd], work, stage_env(work),
                         logs / f"{dataset}-{scale}-{name.replace(' ', '-')}.log")
        lines = result.pop("lines")
        if result["rc"] != 0:
            tail = "\n".join(line for _, line in lines[-15:])
            raise SystemExit(f"rehearsal: {name} failed (exit {result['rc']}); its log: {result['log']}\n{tail}")
        output = work / OUTPUTS[module].format(arg=arg)
        result |= {"stage": name, "output_bytes": dir_bytes(output)}
        if module == "stages.fetch":
            d = decompression_pass(work, dataset)
            result["steps"] = {"decompression (read alone)": d["seconds"],
                               "line checks and writing": round(result["wall_s"] - d["seconds"], 1)}
            result["decompressed_bytes"] = d["bytes"]
        else:
            result["steps"] = step_times(lines, STEPS[module], result["wall_s"])
        if module in ("stages.prepare_mt", "stages.prepare_mlm"):
            caps = json.loads((output / "caps.json").read_text())
            result["sentences"] = (2 * sum(caps["pairs"].values()) if "pairs" in caps else sum(caps["lines"].values()))
            result["pieces_per_sentence"] = round(sum(caps["pieces"].values()) / result["sentences"], 1)
        entry["stages"].append(result)
        print(f"[rehearsal]   {result['wall_s']} s, peak RSS {result['peak_rss_mb']} MB "
              f"(largest process {result['peak_process_rss_mb']} MB), disk {result['peak_disk_bytes'] / 1e9:.2f} GB, "
              f"steps {result['steps']}", flush=True)
    text = {"wikitext103": ("data/raw/wikitext103/train.txt", "data/bin/mlm/spm.model", "data/bin/mlm/dict.txt"),
            "wmt14_en_fr": ("data/raw/wmt14_en_fr/train.en", "data/bin/mt/spm.model", "data/bin/mt/dict.en.txt")
            }.get(dataset)
    if text:
        entry["encoding"] = encoding_rate(work, *(work / t for t in text), 100_000)
        print(f"[rehearsal]   encoding {entry['encoding']}", flush=True)
    # the raw and binarized data of a big dataset are tens of GB: drop them (mnli needs the mlm model)
    shutil.rmtree(mirror / dataset, ignore_errors=True)
    if dataset != "wikitext103" and not keep_outputs:
        for module, *arg in STAGES[dataset]:
            shutil.rmtree(work / OUTPUTS[module].format(arg=arg[0] if arg else ""), ignore_errors=True)
    return entry


# ---------------------------------------------------------------- report

def machine() -> dict:
    from lib import hardware
    return {"cpu": hardware.cpu(), "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 1e9, 1)}


def merge_entries(old: list, new: list) -> list:
    keys = {(e["dataset"], e["scale"]) for e in new}
    return sorted([e for e in old if (e["dataset"], e["scale"]) not in keys] + new,
                  key=lambda e: (list(STAGES).index(e["dataset"]), e["scale"]))


def targets(entries: list) -> list:
    """Peak RSS of every stage at the largest scale run of each dataset, against 4 GB."""
    rows = []
    for dataset in STAGES:
        runs = [e for e in entries if e["dataset"] == dataset]
        if not runs:
            continue
        top = max(runs, key=lambda e: e["scale"])
        for stage in top["stages"]:
            rows.append({"name": f"{dataset} x{top['scale']:g}: {stage['stage']} peak RSS (MB)",
                         "value": stage["peak_rss_mb"], **check(stage["peak_rss_mb"], "<=", PEAK_RSS_TARGET_MB,
                                                                  "" if top["scale"] == 1 else "below full size")})
    return rows


def markdown(report: dict) -> str:
    machines = sorted({f"{e['machine']['cpu']}, {e['machine']['cores']} cores, {e['machine']['memory_gb']} GB memory"
                       for e in report["entries"]})
    out = ["# Rehearsal of the paper profile's data stages\n",
           f"Synthetic corpora of the paper datasets' real sizes at scale 1 (bench/synthetic.py), run through "
           f"this checkout's fetch and prepare stages with the paper profile's params (`python -m bench.rehearsal "
           f"data`). Machine{'s' if len(machines) > 1 else ''}: {'; '.join(machines)}. Peak RSS: the stage "
           "process and its children, summed (shared pages of forked workers counted in each), sampled every "
           "0.2 s; disk: the most the stage's file system lost during the stage (scratch included).\n",
           "## Targets\n",
           table(["target", "value", "goal", "verdict (margin)"],
                 [[t["name"], t["value"], t["goal"], verdict(t)] for t in report["targets"]]),
           "## Stages\n"]
    rows = []
    for e in report["entries"]:
        for s in e["stages"]:
            per_scale = s["wall_s"] / e["scale"]
            rows.append([e["dataset"], f"{e['scale']:g}", s["stage"], s["wall_s"], round(per_scale),
                         s["peak_rss_mb"], s["peak_process_rss_mb"], s["processes"],
                         round(s["peak_disk_bytes"] / 1e9, 2), round(s["output_bytes"] / 1e9, 3),
                         s.get("pieces_per_sentence"), s.get("load_1min_end"),
                         ", ".join(f"{k} {v:g}" for k, v in s["steps"].items())])
    out.append(table(["dataset", "scale", "stage", "wall s", "wall s / scale", "peak RSS MB", "largest process MB",
                      "processes", "peak disk GB", "output GB", "pieces a sentence", "load (1 min) at end",
                      "steps (s)"], rows))
    out += ["\n## At full size\n",
            "Measured at scale 1 where that ran; otherwise projected from the two largest scales run, "
            "linearly in the scale (time and disk; peak RSS as measured at the largest scale, since it does not "
            "grow with the corpus: compare the scales above).\n",
            table(["dataset", "stage", "from", "wall s", "wall min", "peak RSS MB", "peak disk GB", "output GB"],
                  full_size(report["entries"]))]
    enc = [[e["dataset"], f"{e['scale']:g}", e["encoding"]["lines"], e["encoding"]["sentences_per_s"]["1"],
            e["encoding"]["sentences_per_s"]["2"], e["encoding"]["speedup_2_threads"]]
           for e in report["entries"] if "encoding" in e]
    if enc:
        out += ["\n## Encoding throughput (lib/binarize.py: sentencepiece's batch encoder, fairseq ids, written)\n",
                table(["dataset", "scale", "lines", "sentences/s, 1 thread", "2 threads", "speed-up"], enc)]
    out += ["\n## Synthetic inputs\n",
            table(["dataset", "scale", "files (bytes)", "generated in s"],
                  [[e["dataset"], f"{e['scale']:g}", ", ".join(f"{k} {v:,}" for k, v in e["files"].items()),
                    e["generated_s"]] for e in report["entries"]])]
    return "\n".join(out)


def full_size(entries: list) -> list:
    """A row per dataset and stage: the scale-1 run's figures, or a linear projection to scale 1 from the
    two largest scales run."""
    rows = []
    for dataset in STAGES:
        runs = sorted((e for e in entries if e["dataset"] == dataset), key=lambda e: e["scale"])
        if not runs:
            continue
        top = runs[-1]
        for i, stage in enumerate(top["stages"]):
            if top["scale"] == 1 or len(runs) == 1:
                how, at = ("measured" if top["scale"] == 1 else f"x{top['scale']:g} only"), lambda k: stage[k]
            else:
                low, s1, s2 = runs[-2]["stages"][i], runs[-2]["scale"], top["scale"]
                how = f"projected from x{s1:g}, x{s2:g}"
                at = lambda k, low=low: stage[k] + (stage[k] - low[k]) / (s2 - s1) * (1 - s2)
            rows.append([dataset, stage["stage"], how, round(at("wall_s")), round(at("wall_s") / 60, 1),
                         stage["peak_rss_mb"], round(at("peak_disk_bytes") / 1e9, 2), round(at("output_bytes") / 1e9, 2)])
    return rows


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m bench.rehearsal", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["data"], help="data; `models`: bench/rehearsal_models.py")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the real training-set sizes (default 1)")
    p.add_argument("--datasets", nargs="+", choices=list(STAGES), default=list(STAGES))
    p.add_argument("--root", type=Path, help="scratch directory for the corpora and the workspace "
                                             "(default: a new one in the system's temp directory)")
    p.add_argument("--keep", action="store_true", help="keep ROOT afterwards, with every dataset's raw and binarized "
                                                       "data (`bench.rehearsal models --root ROOT` trains on them)")
    p.add_argument("--out", type=Path, default=OUT, help="JSON results (the markdown goes beside it)")
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["models"]:
        from bench import rehearsal_models
        return rehearsal_models.main(argv[1:])
    args = parse(argv)
    root = args.root or Path(tempfile.mkdtemp(prefix="rehearsal-"))
    root.mkdir(parents=True, exist_ok=True)
    datasets = [d for d in STAGES if d in args.datasets]
    if "mnli" in datasets and "wikitext103" not in datasets and not (root / "work/data/bin/mlm/spm.model").exists():
        datasets.insert(0, "wikitext103")  # prepare_glue encodes with the pretraining corpus' sentencepiece model
    run_and_report(root, args.keep, args.out, lambda logs, started: [rehearse(d, args.scale, root, logs, args.keep)
                                                                     for d in datasets],
                   merge_entries, targets, markdown)


def run_and_report(root: Path, keep: bool, out: Path, run, merge, targets_of, markdown_of) -> None:
    """`run(logs, started)` in ROOT (kept if it fails, removed afterwards unless `keep`); its entries merged into
    `out`'s (`merge(old, new)`), with `targets_of(entries)`, and the markdown `markdown_of(report)` beside it."""
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    try:
        entries = run(logs, started)
    except BaseException:
        print(f"rehearsal: stopped; {root} is kept, with each stage's log in {logs}", file=sys.stderr)
        raise
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    write_report(out, started, entries, merge, targets_of, markdown_of)


def write_report(out: Path, started: str, entries: list, merge, targets_of, markdown_of) -> None:
    """`entries` merged into `out`'s (`merge(old, new)`), with `targets_of(entries)`; the markdown beside it."""
    old = json.loads(out.read_text())["entries"] if out.exists() else []
    report = {"updated": started, "entries": merge(old, entries)}
    report["targets"] = targets_of(report["entries"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown_of(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
