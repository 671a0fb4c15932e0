"""Pipeline overhead: what the pipeline costs besides training and inference.

- No-op `dvc repro`: timed only while `dvc status` (checked before every run) reports the whole pipeline
  up to date, so it can only skip stages; otherwise reported as skipped with the reason.
- Budget utilisation of each training stage: see UTILISATION_METHOD.
- Start-up: `python -c "import lib.harness, fairseq, torch"` (what every training stage imports) and
  `python -m stages.<x> --bad-args` (exits with a usage error right after its imports and params check).
"""
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

UTILISATION_METHOD = (
    "each training stage runs once, unchanged (`python -m bench.probe` wraps `python -m stages.<stage>` and "
    "only records when fairseq's updates, validations and checkpoint saves run), in a temp project linking "
    "this project's data/ (finetune: with a copy of the pretrained checkpoint; the project's own outputs are "
    "never written), with params.yaml's budget (--quick: capped at 20 s). "
    "Utilisation = time inside updates (forward, backward, optimizer step) / the stage process's wall time; "
    "the rest is start-up (until the first update), between updates (data loading, validation, checkpoints, "
    "logging) and after training (last validation and checkpoint, export, clean-up); validation and "
    "checkpoint saving are also totalled on their own. The fairseq clock is the stage's own training time "
    "(the last `seconds` of its learning curve), which is what the budget counts.")
BENCH_ROOT = Path(__file__).resolve().parents[1]  # holds bench/ and stages/
DVC = [sys.executable, "-m", "dvc"]


def command(args: list, cwd=None):
    """(seconds, exit code, stdout, stderr) of a child process that can import bench and stages."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - started, done.returncode, done.stdout, done.stderr


def dvc_noop(repeats: int) -> dict:
    status_times, repro_times = [], []
    for _ in range(repeats):
        seconds, code, out, err = command([*DVC, "status", "--json"])
        status_times.append(seconds)
        if code != 0:
            reason = f"dvc status failed: {(err or out).strip().splitlines()[-1] if (err or out).strip() else code}"
        elif json.loads(out or "{}"):
            reason = f"pipeline not up to date ({len(json.loads(out))} stages changed, per dvc status)"
        else:
            seconds, code, out, err = command([*DVC, "repro"])
            reason = None if code == 0 else f"dvc repro failed: {(err or out).strip().splitlines()[-1:]}"
            repro_times.append(seconds)
        if reason:
            return {"status_s": round(statistics.median(status_times), 2), "noop_repro_s": None,
                    "skipped": reason}
    print(f"overhead: dvc status {statistics.median(status_times):.2f} s, no-op dvc repro "
          f"{statistics.median(repro_times):.2f} s", flush=True)
    return {"status_s": round(statistics.median(status_times), 2),
            "noop_repro_s": round(statistics.median(repro_times), 2), "runs": len(repro_times)}


def startup(repeats: int, modules: list, imports: bool = True) -> dict:
    result = {"import_stages_fairseq_torch_s": None, "import_peak_rss_mb": None, "stage_bad_args_s": {}}
    if imports:
        code = "import lib.harness, fairseq, torch; from bench.memory import peak_rss_mb; print(peak_rss_mb())"
        runs = [command([sys.executable, "-c", code]) for _ in range(repeats)]
        if any(r[1] for r in runs):
            raise RuntimeError(f"importing lib.harness, fairseq, torch failed: {runs[0][3][-2000:]}")
        result.update(import_stages_fairseq_torch_s=round(statistics.median(r[0] for r in runs), 2),
                      import_peak_rss_mb=round(float(runs[-1][2].split()[-1]), 1))
    for module in modules:
        runs = [command([sys.executable, "-m", f"stages.{module}", "--bad-args"]) for _ in range(repeats)]
        if any(r[1] != 2 for r in runs):  # run_stage's exit code for a usage error
            raise RuntimeError(f"python -m stages.{module} --bad-args: exit {runs[0][1]}, not 2: {runs[0][3][-2000:]}")
        result["stage_bad_args_s"][module] = round(statistics.median(r[0] for r in runs), 2)
    print(f"overhead: start-up: import lib.harness, fairseq, torch {result['import_stages_fairseq_torch_s']} s, "
          f"stages with bad arguments {result['stage_bad_args_s']}", flush=True)
    return result


def utilisation(stage: str, argv: list, cap_seconds: float | None) -> dict:
    """Run `python -m stages.STAGE ARGV` once in a temp project; where its wall time goes."""
    params = yaml.safe_load(Path("params.yaml").read_text())
    budget = params[stage]["recipe"]["budget"]
    if cap_seconds and budget["seconds"] and budget["seconds"] > cap_seconds:
        budget["seconds"] = cap_seconds
    section = "train_mt" if stage == "train_mt" else "pretrain"  # whose `sizes` the stage accepts SIZE from
    params[section]["sizes"] = list(dict.fromkeys([*params[section]["sizes"], argv[0]]))
    name = "-".join(argv)
    row = {"stage": stage, "model": name, "budget": budget}
    if stage == "finetune" and not (Path("models/pretrain") / argv[0] / "checkpoint.pt").exists():
        return {**row, "skipped": f"models/pretrain/{argv[0]}/checkpoint.pt is missing"}
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        shutil.copy("datasets.yaml", project / "datasets.yaml")
        (project / "data").symlink_to(Path("data").resolve())  # only read: the prepare stages do not run
        (project / "models").mkdir()
        if stage == "finetune":  # a copy, never a link: a stage replaces its output directory
            shutil.copytree(Path("models/pretrain") / argv[0], project / "models" / "pretrain" / argv[0])
        started = time.time()
        _, code, out, err = command([sys.executable, "-m", "bench.probe", project / "probe.json", stage, *argv],
                                    cwd=project)
        ended = time.time()
        if code != 0:
            return {**row, "skipped": f"the stage failed (exit {code}): {(err or out)[-500:]}"}
        steps = json.loads((project / "probe.json").read_text())
        with open(project / "reports" / "curves" / f"{stage}-{name}.csv") as f:
            clock = float(list(csv.DictReader(f))[-1]["seconds"])
    wall = ended - started
    row.update(wall_s=round(wall, 2), train_steps_s=round(steps["train_steps_s"], 2), updates=steps["updates"],
               utilisation=round(steps["train_steps_s"] / wall, 4), budget_clock_s=clock,
               startup_s=round(steps["first_start"] - started, 2),
               between_updates_s=round(steps["last_end"] - steps["first_start"] - steps["train_steps_s"], 2),
               validation_s=round(steps["validation_s"], 2), checkpoint_s=round(steps["checkpoint_s"], 2),
               after_training_s=round(ended - steps["last_end"], 2))
    print(f"overhead: {stage} {name}: {row['utilisation']:.1%} of {row['wall_s']} s in updates (start-up "
          f"{row['startup_s']} s, between updates {row['between_updates_s']} s, after {row['after_training_s']} s)",
          flush=True)
    return row
