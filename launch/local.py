"""Local mode: the jobs on this machine, at most `slots` at a time, a job starting once the jobs it
waits for are done. A job asking for GPUs (launch.yaml) gets its own (CUDA_VISIBLE_DEVICES); every job
gets an equal share of the CPU threads (OMP_NUM_THREADS, MKL_NUM_THREADS; params.yaml's
training.threads, when set, still decides the stage's own)."""
import os
import signal
import subprocess
import sys
import time

from launch.plan import DATA, LAUNCHER, LaunchError, Plan


def visible_gpus(arg: str | None) -> list[str]:
    """--gpus 0,1,... when given ("" for none), else CUDA_VISIBLE_DEVICES, else what nvidia-smi lists."""
    if arg is None:
        arg = os.environ.get("CUDA_VISIBLE_DEVICES")
    if arg is None:
        try:
            arg = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                                 capture_output=True, text=True, check=True).stdout.replace("\n", ",")
        except (OSError, subprocess.CalledProcessError):
            arg = ""
    return [g.strip() for g in arg.split(",") if g.strip()]


def run(plan: Plan, todo: dict, gpus_of: dict, slots: int, gpus: list[str], show) -> dict:
    """Run the jobs of `todo` (job -> the jobs of todo it waits for); `show(job, state, detail)` hears
    every change. Returns each job's final state: done, failed or skipped (an upstream job failed)."""
    for job, need in gpus_of.items():
        if gpus and need > len(gpus):
            raise LaunchError(f"launch.yaml: {job} asks for {need} GPUs, this machine has {len(gpus)} (--gpus)")
    threads = str(max(1, (os.cpu_count() or 1) // slots))
    states = {job: "queued" for job in todo}
    for job in todo:
        show(job, "queued", "")
    running, free = {}, list(gpus)
    try:
        while any(s in ("queued", "running") for s in states.values()):
            for job, (proc, taken) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del running[job]
                free += taken
                states[job] = "done" if rc == 0 else "failed"
                show(job, states[job], "" if rc == 0 else failure(plan, job, rc))
            for job, deps in todo.items():
                if states[job] != "queued":
                    continue
                if any(states[d] in ("failed", "skipped") for d in deps):
                    states[job] = "skipped"
                    show(job, "skipped", f"waits for {', '.join(d for d in deps if states[d] != 'done')}")
                elif all(states[d] == "done" for d in deps) and len(running) < slots and \
                        len(free) >= (n := gpus_of[job] if gpus else 0):
                    taken, free = free[:n], free[n:]
                    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
                    if gpus:  # a job asking for none sees none, so `training.device: auto` cannot take one
                        env["CUDA_VISIBLE_DEVICES"] = ",".join(taken)
                    plan.clear_state(job)
                    with open(plan.log(job), "a") as log:
                        # its own session: the whole job (dvc, the stage, its workers) is stopped as one
                        proc = subprocess.Popen([sys.executable, "-m", "launch.job", plan.folder, job], cwd=LAUNCHER,
                                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                    running[job] = (proc, taken)
                    states[job] = "running"
                    show(job, "running", f"pid {proc.pid}" + (f", GPU {','.join(taken)}" if taken else ""))
            time.sleep(0.5)
    finally:  # Ctrl-C or an error here: stop the jobs (their checkouts keep what they trained)
        for proc, _ in running.values():
            os.killpg(proc.pid, signal.SIGTERM)
        for proc, _ in running.values():
            proc.wait()
    return states


def failure(plan: Plan, job: str, rc: int) -> str:
    detail = plan.state(job).get("detail") or (f"killed by signal {-rc}" if rc < 0 else f"exit {rc}")
    return detail


def gpus_wanted(config, jobs) -> dict:
    return {job: (config.data if job == DATA else config.stages[job.split("@")[0]]).gpus for job in jobs}
