"""The grid launcher (python -m launch): the tiny grid as parallel jobs on SLURM and locally, each job in
its own checkout sharing one DVC cache; then a final `dvc repro` that restores every job from the
run-cache. Plus a requeued job that resumes, and, on a toy pipeline (no training, seconds), reruns,
a job whose inputs change, concurrent writers to one cache, and the launcher's errors.

The SLURM tests need a running single-node SLURM (.ci/start-slurm starts one; CI runs it)."""
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, make_tiny_project, set_params, venv_bin
from test_full_pipeline_dvc import tiny_pipeline
from test_pipeline_dvc import enter_copy, run

SMALL = {"time": "10:00", "gpus": 0, "cpus": 1, "mem": "1G"}   # what a test job asks SLURM for
JOBS = ["pretrain@T1", "pretrain@T2", "train_mt@T1", "finetune@T1-sst2", "finetune@T2-sst2", "compress_glue@T1-sst2",
        "compress_glue@T2-sst2", "compress_mt@T1", "evaluate_glue@T1-sst2", "evaluate_glue@T2-sst2", "evaluate_mt@T1"]


def slurm_up() -> bool:
    if not shutil.which("sbatch"):
        return False
    state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout
    return any(s.startswith(("idle", "mixed", "allocated")) for s in state.split())


needs_slurm = pytest.mark.skipif(not slurm_up(), reason="no SLURM answers here (sbatch missing, or start it: "
                                                        "sudo .ci/start-slurm)")


def grid(p):
    """The tiny grid: two masked-LM sizes fine-tuned on SST-2, one translation size; single-threaded."""
    tiny_pipeline(p)
    p["pretrain"]["sizes"] = ["T1", "T2"]
    p["compress"]["onnx_sparsities"] = []   # no ONNX export: its imports cost more than the tiny models


def add_launcher(project: Path, stages) -> None:
    shutil.copytree(REPO / "launch", project / "launch", ignore=shutil.ignore_patterns("__pycache__"))
    config = yaml.safe_load((REPO / "launch.yaml").read_text())
    config.update(stages={kind: SMALL for kind in stages}, data=SMALL)
    (project / "launch.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def commit(project: Path, message: str, init: bool = False) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        if init:
            run("git", "init", "-q")
            run("git", "config", "user.email", "test@example.com")
            run("git", "config", "user.name", "test")
            run("dvc", "init", "-q")
        run("git", "add", "-A")
        run("git", "commit", "-qm", message)


def launch(*args, check=True):
    return run("python", "-m", "launch", *args, check=check)


def env() -> dict:
    return dict(os.environ, PATH=f"{venv_bin()}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1")


def folder(project: Path) -> Path:
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout
    return project / ".launch" / sha.strip()[:12]


def wait_for(condition, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ---------------------------------------------------------------- the tiny grid

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A committed tiny workspace whose data stages the launcher already ran (its `data` job): the
    run-cache holds them, so the grid tests start at training."""
    root = tmp_path_factory.mktemp("grid")
    project = make_tiny_project(root)
    set_params(project, grid)
    add_launcher(project, ["pretrain", "train_mt", "finetune", "compress_glue", "compress_mt", "evaluate_glue",
                           "evaluate_mt"])
    commit(project, "tiny grid", init=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        mp.setenv("DATA_MIRROR", str(root / "mirror"))
        out = launch("local", "data").stdout
    assert re.search(r"data +done", out), out
    shutil.rmtree(project / ".launch")   # its checkouts use this cache; a copy makes its own
    return root


@pytest.fixture
def workspace(built, tmp_path, monkeypatch):
    return enter_copy(built, tmp_path, monkeypatch)


def assert_final_repro_restores_everything(project: Path) -> None:
    """The user's `dvc repro` after the jobs: every job restored from the run-cache, nothing trained,
    only tabulate and report run; dvc.lock complete, `dvc status` clean, both sizes in the report."""
    out = run("dvc", "repro").stdout
    ran = set(re.findall(r"Running stage '([^']+)'", out))
    restored = set(re.findall(r"Stage '([^']+)' is cached - skipping run", out))
    assert ran == {"tabulate", "report"}, out
    assert set(JOBS) <= restored, out
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert set(JOBS) | {"tabulate", "report"} <= set(lock)
    for size in ("T1", "T2"):
        assert (project / f"models/pretrain/{size}/checkpoint.pt").is_file()
        assert (project / f"models/finetune/{size}-sst2/checkpoint.pt").is_file()
        assert (project / f"reports/eval/{size}-sst2.csv").is_file()
    assert "Data and pipelines are up to date." in run("dvc", "status").stdout
    report = (project / "reports/report.md").read_text()
    assert re.search(r"^\| masked LM \| T1 \|", report, re.M) and re.search(r"^\| masked LM \| T2 \|", report, re.M)


def overlapped(plan: Path, a: str, b: str) -> bool:
    sa, sb = (json.loads((plan / "state" / f"{j}.json").read_text()) for j in (a, b))
    return sa["started"] < sb["ended"] and sb["started"] < sa["ended"]


@needs_slurm
def test_slurm_runs_the_grid_as_job_arrays_and_dvc_repro_restores_it(workspace):
    out = launch("slurm", "--wait", "--poll", "1").stdout
    assert "launch: 12 done" in out and "all jobs done" in out, out
    plan = folder(workspace)
    ids = json.loads((plan / "submitted.json").read_text())
    # the two masked-LM sizes: two tasks of one array, side by side on the node's two CPUs
    assert ids["pretrain@T1"].split("_")[0] == ids["pretrain@T2"].split("_")[0]
    assert overlapped(plan, "pretrain@T1", "pretrain@T2")
    # each fine-tuning waited for its own size's array task only
    scripts = {p.name: p.read_text() for p in (plan / "sbatch").iterdir()}
    finetune = [s for s in scripts.values() if "finetune@T1-sst2" in s]
    assert len(finetune) == 1 and f"#SBATCH --dependency=afterok:{ids['pretrain@T1']}\n" in finetune[0]
    assert all("#SBATCH --requeue" in s for s in scripts.values())
    for job in JOBS:
        assert json.loads((plan / "state" / f"{job}.json").read_text())["state"] == "done"
        assert "SLURM job" in (plan / "logs" / f"{job}.log").read_text()
    assert_final_repro_restores_everything(workspace)


def test_local_runs_two_jobs_at_once_and_dvc_repro_restores_them(workspace):
    started = time.time()
    out = launch("local", "-j", "2").stdout
    print(f"tiny grid, 2 local slots: {time.time() - started:.0f} s")
    assert "2 at a time on CPU" in out and re.search(r"data +done +run-cache", out), out
    plan = folder(workspace)
    assert overlapped(plan, "pretrain@T1", "pretrain@T2")
    threads = max(1, os.cpu_count() // 2)   # the cores split between the two slots
    assert f"OMP_NUM_THREADS={threads}" in (plan / "logs" / "pretrain@T1.log").read_text()
    assert_final_repro_restores_everything(workspace)
    out = launch("local", "-j", "2").stdout    # a rerun: everything is in the run-cache
    assert "0 to run" in out and "all jobs done" in out, out


def checkout_curve(plan: Path) -> Path:
    return plan / "checkouts" / "pretrain@T1" / "models/.work/pretrain/T1/curve.csv"


def curve_rows(path: Path) -> int:
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


@pytest.mark.parametrize("mode", [pytest.param("slurm", marks=needs_slurm), pytest.param("local", marks=pytest.mark.skipif(
    slurm_up(), reason="SLURM's requeue carries this test here (the local kill runs where SLURM does not)"))])
def test_a_killed_job_resumes_where_it_stopped_and_ends_within_its_budget(workspace, mode):
    set_params(workspace, lambda p: p["pretrain"]["recipe"].update(budget={"seconds": None, "updates": 400}, validate_every=50))
    commit(workspace, "a longer pretraining")
    plan = folder(workspace)
    args = ["slurm", "--wait", "--poll", "1"] if mode == "slurm" else ["local"]
    first = subprocess.Popen([sys.executable, "-m", "launch", *args, "pretrain@T1"], cwd=workspace, env=env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # two curve points: the checkpoint of the first is saved (the second's may be half-written)
    wait_for(lambda: curve_rows(checkout_curve(plan)) >= 2, 120, "two checkpoints")
    saved = (curve_rows(checkout_curve(plan)) - 1) * 50
    if mode == "slurm":  # what preemption does: the job is killed and queued again
        job = json.loads((plan / "submitted.json").read_text())["pretrain@T1"]
        # it starts again once its old credential expires (.ci/start-slurm: 10 s; SLURM's default 120 s)
        run("scontrol", "requeue", job)
        out, _ = first.communicate(timeout=300)
        assert first.returncode == 0, out
    else:  # a kill -9 of the whole job, then the launcher again
        os.killpg(json.loads((plan / "state" / "pretrain@T1.json").read_text())["pid"], signal.SIGKILL)
        out, _ = first.communicate(timeout=60)
        assert first.returncode == 1 and re.search(r"pretrain@T1 +failed +killed by signal 9", out), out
        out = launch("local", "pretrain@T1").stdout
    assert re.search(r"pretrain@T1 +done", out), out
    log = (plan / "logs" / "pretrain@T1.log").read_text()
    resumed = re.search(r"pretrain T1: resuming at update (\d+) \(([\d.]+) s spent\)", log)
    assert resumed and int(resumed[1]) >= saved > 0, log
    summary = json.loads((plan / "checkouts/pretrain@T1/models/pretrain/T1/summary.json").read_text())
    assert summary["final"]["updates"] == 400                   # the budget, not 400 more
    assert float(summary["final"]["seconds"]) > float(resumed[2])  # the time spent before counts


@pytest.mark.skipif(not os.environ.get("LAUNCH_WALL_TIME"), reason="a measurement (minutes): LAUNCH_WALL_TIME=1")
def test_wall_time_of_the_tiny_grid_sequential_and_with_two_slots(built, tmp_path, monkeypatch):
    """The figure in docs/gpus-and-slurm.md: the tiny grid end to end (data already cached), by `dvc repro` alone, and by
    the launcher with one and with two slots followed by the final `dvc repro`."""
    times = {}
    for how in ("dvc repro", "-j 1", "-j 2"):
        enter_copy(built, tmp_path / how.replace(" ", ""), monkeypatch)
        started = time.time()
        if how != "dvc repro":
            launch("local", *how.split())
        run("dvc", "repro")
        times[how] = time.time() - started
    print("tiny grid end to end: " + ", ".join(f"{how} {t:.0f} s" for how, t in times.items()) +
          f"; speed-up of 2 slots over 1: {times['-j 1'] / times['-j 2']:.2f}x on {os.cpu_count()} cores")


# ---------------------------------------------------------------- a toy pipeline: the launcher's logic

TOY_DVC = """\
stages:
  prep:
    cmd: python prep.py
    deps: [prep.py]
    outs: [data]
  train:
    foreach: [a, b]
    do:
      cmd: python train.py ${item}
      deps: [train.py, data]
      params: [train]
      outs: ["model/${item}"]
  report:
    cmd: python report.py
    deps: [report.py, model]
    outs: [{report.txt: {cache: false}}]
"""
TOY_SCRIPTS = {
    "prep.py": """\
        import pathlib, random
        pathlib.Path("data").mkdir(exist_ok=True)
        pathlib.Path("data/x.bin").write_bytes(random.Random(0).randbytes(8 << 20))
        """,
    "train.py": """\
        import os, pathlib, sys, time, yaml
        item, lr = sys.argv[1], yaml.safe_load(open("params.yaml"))["train"]["lr"]
        if os.environ.get("TOY_FAIL") == item:
            sys.exit(f"train {item}: failing as asked")
        time.sleep(float(os.environ.get("TOY_SLEEP", 0)))
        out = pathlib.Path("model", item)
        out.mkdir(parents=True, exist_ok=True)
        (out / "w.bin").write_bytes(f"{item} {lr}\\n".encode() + pathlib.Path("data/x.bin").read_bytes()[:1 << 20])
        """,
    "report.py": """\
        import pathlib
        pathlib.Path("report.txt").write_text("".join(p.read_bytes().split(b"\\n")[0].decode() + "\\n"
                                                      for p in sorted(pathlib.Path("model").glob("*/w.bin"))))
        """,
}


def make_toy(root: Path) -> Path:
    project = root / "toy"
    project.mkdir(parents=True)
    (project / "dvc.yaml").write_text(TOY_DVC)
    (project / "params.yaml").write_text("train: {lr: 0.1, budget: {seconds: 7200}}\n")
    for name, text in TOY_SCRIPTS.items():
        (project / name).write_text(textwrap.dedent(text))
    add_launcher(project, ["train"])
    commit(project, "toy", init=True)
    return project


@pytest.fixture
def toy(tmp_path, monkeypatch):
    project = make_toy(tmp_path)
    monkeypatch.chdir(project)
    return project


def test_a_rerun_skips_what_the_run_cache_holds_and_reruns_only_what_failed(toy, monkeypatch):
    monkeypatch.setenv("TOY_FAIL", "b")
    first = launch("local", "-j", "2", check=False)
    plan = folder(toy)
    assert first.returncode == 1
    assert re.search(r"train@a +done", first.stdout)
    assert re.search(r"train@b +failed +`dvc repro --no-commit --single-item train@b` exited with \d+ \(its error is "
                     rf"above\); log: {re.escape(str((plan / 'logs/train@b.log').relative_to(toy)))}", first.stdout)
    assert "train b: failing as asked" in (plan / "logs" / "train@b.log").read_text()
    status = launch("status", check=False).stdout
    assert re.search(r"train@a +done", status) and re.search(r"train@b +failed", status), status
    monkeypatch.delenv("TOY_FAIL")
    second = launch("local", "-j", "2").stdout
    assert re.search(r"data +done +run-cache", second) and re.search(r"train@a +done +run-cache", second), second
    assert "1 to run" in second and re.search(r"train@b +done", second), second
    assert (plan / "logs" / "train@a.log").read_text().count(" on ") == 1   # ran once
    out = run("dvc", "repro").stdout
    assert set(re.findall(r"Running stage '([^']+)'", out)) == {"report"}, out
    assert (toy / "report.txt").read_text() == "a 0.1\nb 0.1\n"


def test_a_job_whose_inputs_change_during_its_run_fails_and_caches_nothing(toy, monkeypatch):
    monkeypatch.setenv("TOY_SLEEP", "3")
    plan = folder(toy)
    job = subprocess.Popen([sys.executable, "-m", "launch", "local", "train@a"], cwd=toy, env=env(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = plan / "logs" / "train@a.log"
    wait_for(lambda: log.exists() and "Running stage 'train@a'" in log.read_text(), 60, "train@a to start")
    params = plan / "checkouts" / "train@a" / "params.yaml"
    params.write_text(params.read_text().replace("0.1", "0.2"))   # what the stage reads, mid-run
    out, _ = job.communicate(timeout=60)
    assert job.returncode == 1 and re.search(r"train@a +failed +inputs changed during the run; its outputs are "
                                             r"not cached: params.yaml in ", out), out
    # plain DVC would have cached the outputs of lr 0.1 as those of lr 0.2; here nothing was cached
    monkeypatch.delenv("TOY_SLEEP")
    assert "1 to run" in launch("local", "train@a").stdout   # the checkout is reset to the commit first
    out = run("dvc", "repro", "train@a").stdout
    assert "is cached - skipping run" in out and (toy / "model/a/w.bin").read_bytes().startswith(b"a 0.1")


def test_concurrent_writers_keep_the_shared_cache_and_run_cache_valid(tmp_path, monkeypatch):
    """DVC writes every cache object and run-cache entry to a temporary name, then renames it into place
    (dvc_objects LocalFileSystem.copy/put_file, dvc/stage/cache.py StageCache.save): readers never see a
    partial object, and writers of one object, which is content-addressed, write the same bytes. DVC's
    own run-cache look-up does see a writer's temporary entry, and deletes it when half-written, failing
    that writer (launch/runcache.py; the next test): the launcher's DVC looks up only finished entries.
    Here four checkouts, two parameter values, run the toy pipeline at once into one cache, each with the
    launcher and two slots (plain `dvc repro` in each, at once, is not safe with DVC 3.67)."""
    project = make_toy(tmp_path)
    cache = tmp_path / "shared-cache"
    clones = []
    for i in range(4):
        clone = tmp_path / f"clone{i}"
        run("git", "clone", "-q", str(project), str(clone))
        monkeypatch.chdir(clone)
        run("dvc", "config", "--local", "cache.dir", str(cache))
        if i % 2:
            (clone / "params.yaml").write_text("train: {lr: 0.3, budget: {seconds: 7200}}\n")
            commit(clone, "lr 0.3")
        clones.append(clone)
    procs = [subprocess.Popen([sys.executable, "-m", "launch", "local", "-j", "2"], cwd=c, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in clones]
    for clone, p in zip(clones, procs):
        out, _ = p.communicate(timeout=180)
        logs = "".join(f"\n--- {log.name}\n{log.read_text()}" for log in sorted((folder(clone) / "logs").glob("*.log")))
        assert p.returncode == 0 and "all jobs done" in out, out + logs
    objects = [p for p in (cache / "files" / "md5").rglob("*") if p.is_file()]
    assert len(objects) >= 4
    for path in objects:   # content-addressed: every object's name is its md5
        assert hashlib.md5(path.read_bytes()).hexdigest() == path.parent.name + path.name.removesuffix(".dir")
    entries = [p for p in (cache / "runs").rglob("*") if p.is_file()]
    assert len(entries) == 5 and all(yaml.safe_load(p.read_text())["cmd"] for p in entries)   # prep, train@a/b x 2 lr
    assert not [p for p in cache.rglob("*.tmp*")]
    fresh = tmp_path / "fresh"
    run("git", "clone", "-q", str(project), str(fresh))
    for workspace in (fresh, clones[1]):   # lr 0.1 and lr 0.3: all but report restored from the run-cache
        monkeypatch.chdir(workspace)
        run("dvc", "config", "--local", "cache.dir", str(cache))
        out = run("dvc", "repro").stdout
        assert set(re.findall(r"Running stage '([^']+)'", out)) == {"report"}, out
        assert len(re.findall(r"is cached - skipping run", out)) == 3, out


def test_the_launchers_run_cache_look_up_leaves_a_writers_temporary_entry_alone(toy):
    """The race of the test above, made certain: a writer's half-written entry, the newest file in its
    stage's run-cache folder (as StageCache.save leaves it before its rename). Plain DVC takes it for the
    entry, finds it corrupted and deletes it (the writer's rename then fails: "[Errno 2] No such file or
    directory: '<cache>/runs/<key[:2]>/<key>/.<random>.tmp'"); the launcher's restore skips it and
    restores the finished entry. When plain DVC stops deleting it, launch/runcache.py can go."""
    run("dvc", "repro", "prep")
    (toy / "dvc.lock").unlink()   # (with it, DVC takes the outputs' hashes from there, not from the run-cache)
    (entry,) = [p for p in (toy / ".dvc/cache/runs").rglob("*") if p.is_file()]

    def half_written():
        tmp = entry.parent / ".launch-test-partial.tmp"
        tmp.write_text("")   # what it holds until dump_yaml closes it: the entry is a few hundred bytes
        os.utime(tmp, (entry.stat().st_mtime + 10,) * 2)
        return tmp

    shutil.rmtree(toy / "data")
    tmp = half_written()
    out = run("python", "-c", "from pathlib import Path; from launch.plan import restore; "
                              "print(sorted(restore(Path('.'))))")
    assert out.stdout.strip() == "['prep']" and tmp.exists() and entry.exists(), out.stdout + out.stderr
    assert (toy / "data/x.bin").is_file()
    shutil.rmtree(toy / "data")
    out = run("dvc", "repro", "prep")   # plain DVC: the entry it takes is the writer's file
    assert "corrupted cache file" in out.stdout + out.stderr and not tmp.exists(), out.stdout + out.stderr


def test_launcher_errors_name_what_to_fix(toy):
    def error(*args):
        result = launch(*args, check=False)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        return result.stderr.strip()

    assert "train@c: not a stage run as a job" in error("local", "train@c")
    assert re.fullmatch(r"launch: launch.yaml: stages.train.time 10:00 is shorter than params.yaml's "
                        r"train.budget.seconds \(7200 s\); raise it", error("slurm"))
    (toy / "params.yaml").write_text("train: {lr: 0.5, budget: {seconds: 7200}}\n")
    assert re.fullmatch(r"launch: commit or stash these first, the jobs check out HEAD \(\w{12}\) and would not "
                        r"see them: params.yaml", error("local"))
    commit(toy, "lr 0.5")
    config = yaml.safe_load((toy / "launch.yaml").read_text())
    config["stages"]["train"]["gpu"] = 1
    (toy / "launch.yaml").write_text(yaml.safe_dump(config))
    assert error("local").startswith("launch: launch.yaml: stages.train.gpu: Extra inputs are not permitted")
