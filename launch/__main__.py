"""python -m launch local|slurm|status: run the grid's stages as parallel jobs (docs/gpus-and-slurm.md: "Running the
grid in parallel").

  python -m launch local [-j N] [--gpus 0,1,...] [STAGE ...]   N jobs at a time on this machine
  python -m launch slurm [--wait] [STAGE ...]                  job arrays on SLURM
  python -m launch status                                      queued / running / done / failed
  python -m launch job FOLDER JOB                              one job (what SLURM and `local` start)

STAGE limits the grid to those jobs and the jobs they wait for (`data`: the data stages alone). Run from the workspace (the repository
root); settings in launch.yaml (--config). Every job's result lands in DVC's run-cache: a rerun skips
what it holds, and a final `dvc repro` restores it all and runs what is left (tabulate, report).
"""
import argparse
import shutil
import sys
import time
from pathlib import Path

import yaml

from launch import job as job_module
from launch import local, slurm
from launch.plan import LaunchError, Plan, check_budgets, load_config, short

FINAL = ("done", "failed", "skipped")


class Progress:
    """Prints one line per change of a job's state, with the failed job's reason and log."""

    def __init__(self, plan: Plan):
        self.plan, self.start, self.seen = plan, time.time(), {}
        self.width = max(map(len, plan.jobs), default=4)

    def __call__(self, job: str, state: str, detail: str = "") -> None:
        if self.seen.get(job) == (state, detail):
            return
        self.seen[job] = (state, detail)
        if state == "failed":
            detail = f"{detail}; log: {short(self.plan.log(job))}".lstrip("; ")
        print(f"[{time.time() - self.start:6.0f}s] {job:<{self.width}}  {state:<8} {detail}".rstrip(), flush=True)


def job_states(plan: Plan, done: set, alive: dict) -> dict:
    """job -> (state, detail), from the run-cache (`done`), squeue (`alive`: SLURM id -> state), the
    jobs' own state files and their checkouts' locks (held while a job runs, here or on a node)."""
    ids, out = plan.submitted(), {}
    for job in plan.jobs:
        state, sid = plan.state(job), ids.get(job)
        where = f"SLURM {sid}: " if sid else ""
        if job in done or state.get("state") == "done":
            out[job] = ("done", "")
        elif sid in alive:
            out[job] = ("queued" if alive[sid] in slurm.WAITING else "running", f"SLURM {sid} {alive[sid].lower()}")
        elif state.get("state") == "running" and plan.busy(job):
            out[job] = ("running", f"on {state['host']}")
        elif state.get("state") == "failed":
            out[job] = ("failed", where + state["detail"])
        elif state.get("state") == "running":
            slurm_log = f"; see {short(plan.folder / 'logs')}/slurm-{sid}.out" if sid else ""
            out[job] = ("failed", f"{where}ended without reporting (killed: time limit, memory?){slurm_log}")
        elif sid:
            out[job] = ("skipped", f"{where}never ran (cancelled, or a job it waits for failed)")
        else:
            out[job] = ("to do", "")
    return out


def summary(plan: Plan, states: dict, again: str) -> int:
    counts = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    print("launch: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if all(s == "done" for s in states.values()):
        print("launch: all jobs done. Next, here: `dvc repro` restores them from the run-cache and runs the "
              "rest; commit its dvc.lock.")
        return 0
    bad = [j for j, s in states.items() if s in ("failed", "skipped")]
    if bad:
        print(f"launch: not done: {', '.join(bad)}. Fix the cause (logs above), commit, and run `{again}` "
              "again: it reruns only what is not done.")
    return 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=Path("launch.yaml"), help="default: launch.yaml")
    sub = parser.add_subparsers(dest="mode", required=True)
    p_local = sub.add_parser("local", help="run the jobs on this machine")
    p_local.add_argument("-j", "--jobs", type=int, default=None,
                         help="jobs at a time (default: one per GPU, or 1 without GPUs)")
    p_local.add_argument("--gpus", default=None, help="GPU ids to use (default: CUDA_VISIBLE_DEVICES or all)")
    p_slurm = sub.add_parser("slurm", help="submit the jobs to SLURM")
    p_slurm.add_argument("--wait", action="store_true", help="follow the jobs until they end")
    p_slurm.add_argument("--poll", type=float, default=30, help="seconds between squeue calls with --wait")
    for p in (p_local, p_slurm):
        p.add_argument("stages", nargs="*", metavar="STAGE")
    sub.add_parser("status", help="show the jobs of the current commit")
    p_job = sub.add_parser("job", help=argparse.SUPPRESS)
    p_job.add_argument("folder", type=Path)
    p_job.add_argument("job")
    args = parser.parse_args(argv)
    if args.mode == "job":
        return job_module.main(args.folder, args.job)
    try:
        return launch(args)
    except LaunchError as e:
        print(f"launch: {e}", file=sys.stderr)
        return 2


def launch(args) -> int:
    config = load_config(args.config)
    if args.mode == "slurm":
        check_budgets(config, yaml.safe_load(Path("params.yaml").read_text()) if Path("params.yaml").exists() else {})
    plan = Plan.make(Path.cwd(), config, getattr(args, "stages", []), clean=args.mode != "status")
    show = Progress(plan)
    done = plan.done()
    print(f"launch: commit {plan.sha[:12]}, {len(plan.jobs)} jobs, {len(done)} already in the run-cache; "
          f"logs in {short(plan.folder / 'logs')}", flush=True)
    for job in plan.jobs:
        if job in done:
            show(job, "done", "run-cache")

    if args.mode == "status":
        alive = slurm.queue() if plan.submitted() and shutil.which("squeue") else {}
        states = job_states(plan, done, alive)
        for job, (state, detail) in states.items():
            if job not in done:
                show(job, state, detail)
        return summary(plan, {j: s for j, (s, _) in states.items()}, "python -m launch ...")

    if args.mode == "local":
        gpus = local.visible_gpus(args.gpus)
        slots = args.jobs or max(1, len(gpus))
        todo = {j: plan.jobs[j] - done for j in plan.jobs if j not in done}
        print(f"launch: {len(todo)} to run, {slots} at a time" +
              (f" on GPUs {','.join(gpus)}" if gpus else " on CPU"), flush=True)
        states = local.run(plan, todo, local.gpus_wanted(config, todo), slots, gpus, show)
        return summary(plan, {**{j: "done" for j in done}, **states}, "python -m launch local")

    if not shutil.which("sbatch"):
        raise LaunchError("sbatch not found: run this on a SLURM login node (or use `python -m launch local`)")
    alive, ids = slurm.queue(), plan.submitted()
    running = {j: ids[j] for j in plan.jobs if j not in done and ids.get(j) in alive}
    todo = {j: plan.jobs[j] - done for j in plan.jobs if j not in done and j not in running}
    for job in todo:
        plan.clear_state(job)
    submitted = slurm.submit(plan, config, todo, running)
    print(f"launch: submitted {len(submitted)} jobs" + (f", {len(running)} still queued or running from "
                                                       "before" if running else ""), flush=True)
    while True:
        states = job_states(plan, done, slurm.queue())
        for job, (state, detail) in states.items():
            if job not in done:
                show(job, state, detail)
        if not args.wait or all(s in FINAL for s, _ in states.values()):
            break
        time.sleep(args.poll)
    if not args.wait:
        print("launch: follow with `python -m launch status`", flush=True)
        return 0
    return summary(plan, {j: s for j, (s, _) in states.items()}, "python -m launch slurm --wait")


if __name__ == "__main__":
    sys.exit(main())
