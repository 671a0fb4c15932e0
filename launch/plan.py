"""What the launcher and its jobs share: launch.yaml, the job graph read from DVC, the per-commit folder
(checkouts, logs, states) and the run-cache look-up.

Folder layout, one per commit: <root>/<commit[:12]>/
  plan.json             what the jobs need (commit, workspace, cache, the data stages)
  checkouts/<job>/      the job's own git checkout, sharing the workspace's DVC cache (and its lock file)
  checkouts/probe/      where the launcher asks the run-cache what is done
  logs/<job>.log        the job's output, appended by every attempt
  state/<job>.json      running / done / failed, written by the job
  submitted.json        job ids of the last submission
"""
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from contextlib import chdir
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from launch.runcache import safe_run_cache

DATA = "data"   # the job that runs every non-job stage upstream of the jobs (fetch, prepare)
LAUNCHER = Path(__file__).resolve().parents[1]   # where `python -m launch.job` and the jobs' DVC import from


class LaunchError(Exception):
    """A problem the user can fix; shown as one line, without a traceback."""


# ---------------------------------------------------------------- launch.yaml

class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(Strict):
    time: str = Field(pattern=r"^(\d+-)?\d+(:\d\d){0,2}$")   # sbatch --time
    gpus: int = Field(ge=0)
    cpus: int = Field(ge=1)
    mem: str = Field(pattern=r"^\d+[KMGT]?$")                 # sbatch --mem


class Slurm(Strict):
    partition: str | None
    account: str | None
    gres: str
    extra: list[str]


class Config(Strict):
    root: str
    stages: dict[str, Resources] = Field(min_length=1)
    data: Resources
    slurm: Slurm


def load_config(path: Path) -> Config:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise LaunchError(f"{path}: not found (the launcher's settings; see docs/gpus-and-slurm.md)")
    except yaml.YAMLError as e:
        raise LaunchError(f"{path}: not valid YAML: {str(e).splitlines()[0]}")
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise LaunchError(f"{path}: {key}: {err['msg']}")


def seconds(time_limit: str) -> int:
    """sbatch's --time in seconds: minutes, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    days, _, rest = time_limit.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:
        h, m, s = (parts + [0, 0])[:3]
    else:
        h, m, s = {1: [0, parts[0], 0], 2: [0, *parts], 3: parts}[len(parts)]
    return int(days or 0) * 86400 + h * 3600 + m * 60 + s


def check_budgets(config: Config, params: dict) -> None:
    """A SLURM job killed at its time limit before its seconds budget is spent fails; say so now."""
    for kind, resources in config.stages.items():
        section = params.get(kind) or {}
        key = f"{kind}.recipe.budget" if "recipe" in section else f"{kind}.budget"  # the pipeline's or a toy's
        budget = (section.get("recipe") or section).get("budget") or {}
        if budget.get("seconds") and seconds(resources.time) < budget["seconds"]:
            raise LaunchError(f"launch.yaml: stages.{kind}.time {resources.time} is shorter than params.yaml's "
                              f"{key}.seconds ({budget['seconds']:g} s); raise it")


# ---------------------------------------------------------------- git and DVC

def run(cmd: list, cwd: Path, what: str | None = None) -> str:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise LaunchError(f"{what or ' '.join(map(str, cmd))} failed in {cwd}: {detail[-1] if detail else result.returncode}")
    return result.stdout


def dvc_cmd() -> list:
    """DVC's command line: `python -m dvc` with launch.runcache's safe_run_cache, importing the launcher
    from LAUNCHER whatever directory it runs in (sys.path then is as `python -c` leaves it)."""
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(LAUNCHER)!r}); "
            "from launch.runcache import dvc_main; del sys.path[0]; sys.exit(dvc_main(sys.argv[1:]))"]


def changed_inputs(checkout: Path) -> list[str]:
    """Tracked files that differ from the commit checked out, except what `dvc repro` itself writes
    (dvc.lock, the .gitignore entries of outputs)."""
    out = run(["git", "status", "--porcelain", "--untracked-files=no"], checkout)
    paths = [line[3:] for line in out.splitlines()]
    return [p for p in paths if p != "dvc.lock" and Path(p).name != ".gitignore"]


def head(workspace: Path) -> str:
    try:
        return run(["git", "rev-parse", "--verify", "HEAD"], workspace).strip()
    except LaunchError:
        raise LaunchError(f"{workspace}: not a git repository with a commit; jobs check out a commit "
                          "(git init, git add, git commit)")


def pipeline(checkout: Path) -> tuple[list[str], dict[str, set[str]]]:
    """Every stage of the checkout's dvc.yaml in pipeline order (upstream first), and the stages each
    one depends on, directly or not."""
    import networkx as nx
    from dvc.repo import Repo

    with chdir(checkout), Repo() as repo:   # (stage names are relative to the current directory)
        graph = repo.index.graph   # edges point from a stage to the stages it depends on
        order = [s.addressing for s in reversed(list(nx.topological_sort(graph)))]
        upstream = {s.addressing: {u.addressing for u in nx.descendants(graph, s)} for s in graph}
    return order, upstream


def restore(checkout: Path, stages: set[str] | None = None, say=None) -> set[str]:
    """Restore into `checkout`, upstream first, every stage of `stages` (default: all) that DVC's
    run-cache holds for the inputs it then has (as `dvc repro` would, without running anything).
    A stage whose upstream is not restored is not looked up. Returns the stages restored."""
    import networkx as nx
    from dvc.repo import Repo
    from dvc.stage.cache import RunCacheNotFoundError

    safe_run_cache()
    restored = set()
    quiet = logging.getLogger("dvc")   # not "Stage ... is cached - skipping run" for each
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    with chdir(checkout), Repo() as repo, repo.lock:
        graph = repo.index.graph
        for stage in reversed(list(nx.topological_sort(graph))):
            name = stage.addressing
            if stages is not None and name not in stages:
                continue
            if any(up.addressing not in restored for up in graph.successors(stage)):
                continue
            try:
                repo.stage_cache.restore(stage)
            except RunCacheNotFoundError:
                continue
            restored.add(name)
            if say:
                say(f"restored {name} from the run-cache")
    quiet.setLevel(level)
    return restored


# ---------------------------------------------------------------- the plan of one commit

class Plan:
    """The jobs of the workspace's HEAD: `jobs` maps each job (a stage, or `data`) to the jobs it waits
    for, in pipeline order. Built by the launcher; `Plan.load(folder)` is what a job reads."""

    def __init__(self, folder: Path, info: dict):
        self.folder, self.info = folder, info
        self.sha, self.workspace = info["sha"], Path(info["workspace"])
        self.data_stages = info["data_stages"]
        self.jobs = {name: set(deps) for name, deps in info["jobs"].items()}

    @classmethod
    def load(cls, folder: Path) -> "Plan":
        return cls(folder, json.loads((folder / "plan.json").read_text()))

    @classmethod
    def make(cls, workspace: Path, config: Config, targets: list[str], clean: bool = True) -> "Plan":
        """The plan of the workspace's HEAD; with `clean`, refuse uncommitted changes (jobs would not
        see them)."""
        workspace = workspace.resolve()
        if not (workspace / ".dvc").is_dir():
            raise LaunchError(f"{workspace}: not a DVC repository (dvc init)")
        sha = head(workspace)
        dirty = changed_inputs(workspace) if clean else []
        if dirty:
            raise LaunchError(f"commit or stash these first, the jobs check out HEAD ({sha[:12]}) and would not "
                              f"see them: {', '.join(dirty)}")
        cache = run([*dvc_cmd(), "cache", "dir"], workspace).strip()
        from dvc.repo import Repo
        with Repo(str(workspace)) as repo:   # the workspace's cache settings hold for every checkout
            settings = {k: repo.config["cache"][k] for k in ("type", "shared") if k in repo.config["cache"]}
        order, upstream = pipeline(workspace)
        kinds = {name: name.split("@")[0] for name in order}
        unknown = sorted(set(config.stages) - set(kinds.values()))
        if unknown:
            raise LaunchError(f"launch.yaml: stages: {', '.join(unknown)} not in dvc.yaml "
                              f"(its stages: {', '.join(sorted(set(kinds.values())))})")
        jobs = [name for name in order if kinds[name] in config.stages]
        for target in targets:
            if target not in jobs + [DATA]:
                raise LaunchError(f"{target}: not a stage run as a job (launch.yaml stages; jobs here: "
                                  f"{DATA}, {', '.join(jobs)})")
        data = [name for name in order if name not in jobs and any(name in upstream[j] for j in jobs)]
        if targets:   # those jobs and the jobs they wait for
            wanted = set().union(*({t} | upstream[t] for t in targets if t != DATA))
            jobs = [name for name in jobs if name in wanted]
            data = [name for name in data if DATA in targets or any(name in upstream[j] for j in jobs)]
        for name in data:
            inside = sorted(upstream[name] & set(jobs))
            if inside:
                raise LaunchError(f"launch.yaml: {name} must run as a job too: it comes after the jobs "
                                  f"{', '.join(inside)} (add {kinds[name]} to stages)")
        graph = {DATA: []} if data else {}
        for name in jobs:
            graph[name] = ([DATA] if data else []) + [j for j in jobs if j in upstream[name]]
        base = (workspace / config.root).resolve()
        if base == workspace:
            raise LaunchError("launch.yaml: root must be a folder of its own, not the workspace (e.g. .launch)")
        folder = base / sha[:12]
        info = {"sha": sha, "workspace": str(workspace), "cache": {"dir": cache, **settings},
                "data_stages": data, "jobs": graph}
        folder.mkdir(parents=True, exist_ok=True)
        if base.is_relative_to(workspace):
            (base / ".gitignore").write_text("*\n")   # keeps `git status` clean
        for sub in ("logs", "state", "checkouts"):
            (folder / sub).mkdir(exist_ok=True)
        write_json(folder / "plan.json", info)
        return cls(folder, info)

    def stages_of(self, job: str) -> list[str]:
        return self.data_stages if job == DATA else [job]

    def log(self, job: str) -> Path:
        return self.folder / "logs" / f"{job}.log"

    # ------------------------------------------------------------ checkouts

    def lock(self, name: str, wait: bool = False):
        """Open and lock checkouts/<name>.lock, held until the returned file is closed: one writer per
        checkout, whatever starts a second job for it (a rerun launcher, a duplicate submission)."""
        f = open(self.folder / "checkouts" / f"{name}.lock", "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            f.close()
            raise LaunchError(f"another job is running in {self.folder / 'checkouts' / name}; wait for it "
                              "or stop it (two writers in one checkout would corrupt it)")
        return f

    def busy(self, name: str) -> bool:
        """Whether a job holds the checkout's lock now (it is running, here or on another node)."""
        try:
            self.lock(name).close()
            return False
        except LaunchError:
            return True

    def checkout(self, name: str, link_type: str | None = None) -> Path:
        """checkouts/<name>: a git clone of the commit using the workspace's DVC cache (made once; a
        requeued job finds its work dir, models/.work, there). Call with the checkout's lock held."""
        path = self.folder / "checkouts" / name
        if (path / ".git").exists():
            return path
        tmp = path.with_name(name + ".partial")   # a job killed while cloning leaves no half checkout
        shutil.rmtree(tmp, ignore_errors=True)
        run(["git", "clone", "--quiet", "--shared", "--no-checkout", self.workspace, tmp], self.folder)
        run(["git", "checkout", "--quiet", "--detach", self.sha], tmp)
        cache = self.info["cache"]
        settings = {"dir": cache["dir"], "shared": cache.get("shared"),
                    # links instead of copies of every input: safe, DVC makes linked files read-only
                    "type": link_type or cache.get("type") or "reflink,hardlink,symlink,copy"}
        from dvc.config import Config
        with Config(str(tmp / ".dvc")).edit("local") as local:   # = dvc config --local cache.<key> <value>
            local["cache"] = {k: v for k, v in settings.items() if v}
        os.rename(tmp, path)
        return path

    def done(self) -> set[str]:
        """The jobs whose stages the run-cache holds, asked in checkouts/probe (symlinks, no copies)."""
        with self.lock("probe", wait=True):
            probe = self.checkout("probe", link_type="symlink")
            restored = restore(probe)
        return {job for job in self.jobs if set(self.stages_of(job)) <= restored}

    # ------------------------------------------------------------ states

    def state(self, job: str) -> dict:
        try:
            return json.loads((self.folder / "state" / f"{job}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def set_state(self, job: str, state: str, detail: str = "") -> None:
        now = time.time()
        started = now if state == "running" else self.state(job).get("started")
        write_json(self.folder / "state" / f"{job}.json",
                   {"state": state, "detail": detail, "started": started, "ended": None if state == "running" else now,
                    "host": os.uname().nodename, "pid": os.getpid()})

    def clear_state(self, job: str) -> None:
        (self.folder / "state" / f"{job}.json").unlink(missing_ok=True)

    def submitted(self) -> dict:
        path = self.folder / "submitted.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def record_submitted(self, ids: dict) -> None:
        write_json(self.folder / "submitted.json", {**self.submitted(), **ids})


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def short(path: Path) -> str:
    """A path relative to the current directory when it is below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)

