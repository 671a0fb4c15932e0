"""SLURM mode: the jobs as job arrays, one per kind of stage and set of jobs waited for (so that each
finetune@<size>-<task> waits only for pretrain@<size>: `--dependency=afterok:<array>_<task>`), with
the resources of launch.yaml, `--requeue` (a preempted job starts again and resumes from its
checkout's models/.work/) and `--kill-on-invalid-dep` (a job whose upstream failed is cancelled
instead of pending forever)."""
import shlex
import subprocess
import sys

from launch.plan import DATA, LAUNCHER, LaunchError, Plan, run

ALIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
         "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "PREEMPTED")
WAITING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "PREEMPTED")

SCRIPT = """#!/bin/bash
{options}
# {kind}: jobs of commit {sha}, submitted by `python -m launch slurm`; array task i runs jobs[i]
jobs=({jobs})
job=${{jobs[$SLURM_ARRAY_TASK_ID]}}
exec {python} -m launch.job {folder} "$job" >>{logs}/"$job".log 2>&1
"""


def queue() -> dict:
    """This user's jobs SLURM still knows as alive: array task id (123_4) -> state."""
    try:
        out = subprocess.run(["squeue", "--me", "--noheader", "--array", "--format=%i %T"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise LaunchError(f"squeue failed: {getattr(e, 'stderr', '') or e}".strip())
    return {job: state for job, state in (line.split() for line in out.splitlines()) if state in ALIVE}


def submit(plan: Plan, config, todo: dict, alive_ids: dict) -> dict:
    """sbatch the jobs of `todo` (job -> the jobs it waits for), waiting also on the still alive jobs
    of an earlier submission (`alive_ids`: job -> SLURM id). Returns job -> SLURM id (<array>_<task>)."""
    groups = {}
    for job, deps in todo.items():   # in pipeline order: a group's upstream groups come before it
        kind = DATA if job == DATA else job.split("@")[0]
        groups.setdefault((kind, tuple(sorted(deps))), []).append(job)
    ids, scripts = dict(alive_ids), plan.folder / "sbatch"
    scripts.mkdir(exist_ok=True)
    slurm = config.slurm
    for (kind, deps), jobs in groups.items():
        res = config.data if kind == DATA else config.stages[kind]
        after = [ids[d] for d in deps if d in ids]
        options = [f"--job-name={kind}", f"--array=0-{len(jobs) - 1}", f"--time={res.time}",
                   f"--cpus-per-task={res.cpus}", f"--mem={res.mem}",
                   *([f"--gres={slurm.gres}:{res.gpus}"] if res.gpus else []),
                   *([f"--partition={slurm.partition}"] if slurm.partition else []),
                   *([f"--account={slurm.account}"] if slurm.account else []),
                   *([f"--dependency=afterok:{':'.join(after)}"] if after else []),
                   "--kill-on-invalid-dep=yes", "--requeue", "--open-mode=append",
                   f"--output={plan.folder / 'logs' / 'slurm-%A_%a.out'}", f"--chdir={LAUNCHER}", *slurm.extra]
        script = scripts / f"{len(list(scripts.iterdir())):03d}-{kind}.sh"
        script.write_text(SCRIPT.format(options="\n".join(f"#SBATCH {o}" for o in options), kind=kind,
                                        sha=plan.sha[:12], jobs=" ".join(map(shlex.quote, jobs)),
                                        python=shlex.quote(sys.executable), folder=shlex.quote(str(plan.folder)),
                                        logs=shlex.quote(str(plan.folder / "logs"))))
        try:
            array = run(["sbatch", "--parsable", script], plan.folder, what=f"sbatch {script}").strip().split(";")[0]
        except LaunchError as e:
            raise LaunchError(f"{e} (the jobs submitted before it are in `squeue --me`)")
        new = {job: f"{array}_{i}" for i, job in enumerate(jobs)}
        plan.record_submitted(new)
        ids.update(new)
    return {job: ids[job] for job in todo}
