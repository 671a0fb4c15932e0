"""One job of the grid, as SLURM or the local runner starts it: `python -m launch job FOLDER JOB`.

In checkouts/<JOB> (its own git checkout of the submitted commit, sharing the workspace's DVC cache):
reset its tracked files to that commit, restore the stage's inputs from the run-cache, run
`dvc repro --single-item --no-commit` on the stage, check that no tracked input changed, and only then
`dvc commit` it, which stores its outputs and its run-cache entry. (A plain `dvc repro` records the params and code as they are when the stage ends:
an edit made during a 24-hour run would be cached with outputs it did not produce.)
The job `data` runs the data stages the same way. A job that is run again (a SLURM requeue, the
launcher rerun after a kill) finds its checkout and resumes the stage from models/.work/ there.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from launch.plan import DATA, LaunchError, Plan, changed_inputs, dvc_cmd, pipeline, restore, run


START = time.time()


def say(message: str) -> None:
    print(f"launch job [{time.time() - START:.0f}s]: {message}", flush=True)


def main(folder: Path, job: str) -> int:
    plan = Plan.load(folder)
    where = os.environ.get("SLURM_JOB_ID") and (f"SLURM job {os.environ.get('SLURM_ARRAY_JOB_ID')}_"
                                               f"{os.environ.get('SLURM_ARRAY_TASK_ID')}, restart "
                                               f"{os.environ.get('SLURM_RESTART_COUNT', 0)}")
    devices = ", ".join(f"{k}={os.environ[k]}" for k in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS") if k in os.environ)
    say(f"{job} on {os.uname().nodename} at {time.strftime('%Y-%m-%d %H:%M:%S')} "
        f"({where or f'pid {os.getpid()}'}), commit {plan.sha[:12]}" + (f", {devices}" if devices else ""))

    def terminated(signum, frame):  # scancel, preemption, the time limit, the local runner's Ctrl-C
        plan.set_state(job, "failed", f"stopped by signal {signal.Signals(signum).name}")
        say(f"{job}: stopped by signal {signal.Signals(signum).name}")
        os._exit(128 + signum)
    signal.signal(signal.SIGTERM, terminated)
    signal.signal(signal.SIGINT, terminated)

    try:
        lock = plan.lock(job)
    except LaunchError as e:  # the job holding the checkout owns its state too: leave that alone
        say(f"{job} not started: {e}")
        return 1
    with lock:
        plan.set_state(job, "running")
        try:
            run_job(plan, job)
        except LaunchError as e:
            say(f"{job} failed: {e}")
            plan.set_state(job, "failed", str(e))
            return 1
        except BaseException as e:  # a bug: the traceback goes to the log, the state says where
            plan.set_state(job, "failed", f"{type(e).__name__}: {e}")
            raise
        plan.set_state(job, "done")
    say(f"{job} done")
    return 0


def run_job(plan: Plan, job: str) -> None:
    checkout = plan.checkout(job)
    stages = plan.stages_of(job)
    # the submitted commit's files, whatever an earlier attempt or a person left; models/.work stays
    run(["git", "reset", "--quiet", "--hard", plan.sha], checkout)
    if job != DATA:
        _, upstream = pipeline(checkout)
        missing = upstream[job] - restore(checkout, upstream[job], say)
        if missing:
            raise LaunchError(f"inputs not in the run-cache: {', '.join(sorted(missing))} (their jobs must "
                              "finish first; the launcher orders them)")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    single = ["--single-item"] if job != DATA else []
    dvc(checkout, env, "repro", "--no-commit", *single, *stages)
    guard(checkout, plan.sha)
    dvc(checkout, env, "commit", "--force", *stages)


def guard(checkout: Path, sha: str) -> None:
    """Fail when the checkout no longer is the submitted commit: its result would be cached under
    inputs it was not computed from."""
    head = run(["git", "rev-parse", "HEAD"], checkout).strip()
    changed = changed_inputs(checkout)
    if head != sha or changed:
        what = f"HEAD moved to {head[:12]}" if head != sha else ", ".join(changed)
        raise LaunchError(f"inputs changed during the run; its outputs are not cached: {what} in {checkout}")


def dvc(checkout: Path, env: dict, *args: str) -> None:
    say(f"dvc {' '.join(args)}")
    rc = subprocess.run([*dvc_cmd(), *args], cwd=checkout, env=env).returncode
    if rc != 0:
        raise LaunchError(f"`dvc {' '.join(args)}` exited with {rc} (its error is above)")


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2]))
