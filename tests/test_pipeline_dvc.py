"""The data stages through DVC itself, on the tiny mirror: repro, caching, invalidation, remotes."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_tiny_project, set_params, sha256, venv_bin

DATA_STAGES = ["fetch_corpus", "fetch_glue@sst2", "fetch_glue@rte", "fetch_translation",
               "prepare_mlm", "prepare_glue@sst2", "prepare_glue@rte", "prepare_mt"]


def run(*cmd, check=True):
    env = dict(os.environ, PATH=f"{venv_bin()}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def repro(*stages, check=True):
    """`dvc repro STAGES` and the stages it ran, leaving out `validate`: it checks params.yaml again
    whenever that changed, and does no work."""
    result = run("dvc", "repro", *stages, check=check)
    return result, set(re.findall(r"Running stage '([^']+)'", result.stdout + result.stderr)) - {"validate"}


def build_dvc_project(root: Path, edit=None, stages=()) -> tuple:
    """A tiny project under `root` as a git + DVC repo after `dvc repro STAGES` (all when none; no repro
    when None), with its params edited by `edit` first. Returns repro's result and the stages that ran."""
    project = make_tiny_project(root)
    if edit:
        set_params(project, edit)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DATA_MIRROR", str(root / "mirror"))
        mp.chdir(project)
        run("git", "init", "-q")
        run("git", "config", "user.email", "test@example.com")
        run("git", "config", "user.name", "test")
        run("dvc", "init", "-q")
        result, ran = repro(*stages) if stages is not None else (None, set())
        run("git", "add", "-A")
        run("git", "commit", "-qm", "tiny pipeline")
    return result, ran


def enter_copy(built: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of a built project (repo, DVC cache and mirror), entered, so a test can change it."""
    shutil.copytree(built, tmp_path / "copy", symlinks=True)
    monkeypatch.chdir(tmp_path / "copy" / "project")
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "copy" / "mirror"))
    return tmp_path / "copy" / "project"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny project as a git + DVC repo after one full `dvc repro` of the data stages (done once)."""
    root = tmp_path_factory.mktemp("built")
    result, ran = build_dvc_project(root, stages=DATA_STAGES)
    assert ran == set(DATA_STAGES), result.stdout
    return root


@pytest.fixture
def dvc_project(built, tmp_path, monkeypatch):
    return enter_copy(built, tmp_path, monkeypatch)


def test_repro_produces_binarized_data_for_all_three_tasks(dvc_project):
    for path in ("data/bin/mlm/train.bin", "data/bin/glue/sst2/input0/train.bin", "data/bin/glue/rte/input1/valid.bin",
                 "data/bin/glue/rte/label/train.bin", "data/bin/mt/train.en-fr.fr.bin", "data/bin/mt/test.raw.fr"):
        assert Path(path).is_file(), path
    assert Path("dvc.lock").is_file()


def test_second_repro_does_nothing_and_says_so(dvc_project):
    result, ran = repro(*DATA_STAGES)
    assert ran == set()
    assert "Data and pipelines are up to date." in result.stdout
    assert "didn't change, skipping" in result.stdout


def test_vocab_change_reruns_prepare_stages_only(dvc_project):
    assert json.loads(Path("data/bin/mlm/caps.json").read_text())["vocab_size"] == 200
    set_params(dvc_project, lambda p: p["prepare_mlm"].update(vocab_size=150))
    _, ran = repro(*DATA_STAGES)
    assert ran == {"prepare_mlm", "prepare_glue@sst2", "prepare_glue@rte"}
    set_params(dvc_project, lambda p: p["prepare_mt"].update(vocab_size=150))
    _, ran = repro(*DATA_STAGES)
    assert ran == {"prepare_mt"}


def test_push_and_pull_through_a_local_remote(dvc_project, tmp_path):
    run("dvc", "remote", "add", "-d", "local", str(tmp_path / "remote"))
    run("dvc", "push", *DATA_STAGES)
    before = {p: sha256(p) for p in Path("data").rglob("*") if p.is_file() and ".gitignore" not in p.name}
    shutil.rmtree("data/raw")
    shutil.rmtree("data/bin")
    shutil.rmtree(".dvc/cache")
    run("dvc", "pull", *DATA_STAGES)
    after = {p: sha256(p) for p in Path("data").rglob("*") if p.is_file() and ".gitignore" not in p.name}
    assert after == before
    assert "up to date" in run("dvc", "status", *DATA_STAGES).stdout


def test_bad_input_stops_the_stage_and_keeps_other_outputs(dvc_project):
    mirror = Path(os.environ["DATA_MIRROR"])
    dev = mirror / "rte" / "dev.tsv"
    lines = dev.read_text().splitlines()
    lines[5] = lines[5].rsplit("\t", 1)[0] + "\tmaybe"
    dev.write_text("\n".join(lines) + "\n")
    set_params(dvc_project, lambda p: p["datasets"]["rte"]["files"]["dev.tsv"].update(sha256=sha256(dev)))
    mlm_before = sha256(Path("data/bin/mlm/train.bin"))
    result, _ = repro(*DATA_STAGES, check=False)
    assert result.returncode != 0
    assert f"{dev}:6: label 'maybe' is not one of the task's labels" in result.stderr
    assert sha256(Path("data/bin/mlm/train.bin")) == mlm_before
    status = run("dvc", "status", "prepare_mlm", "prepare_glue@sst2", "prepare_mt").stdout
    assert "up to date" in status, status


def test_a_bad_param_fails_dvc_exp_run_at_once_when_every_stage_is_cached(dvc_project):
    result = run("dvc", "exp", "run", "-S", "compress.bits=[1]", "prepare_mlm", check=False)
    assert result.returncode != 0, result.stdout
    assert "params.yaml: invalid parameters\n  compress: bits.0: 1 is outside 2..16" in result.stderr, result.stderr


def without_the_venv_on_path(tmp_path: Path) -> dict:
    """The environment of `.venv/bin/dvc repro` run without activating the venv: the first `python` on PATH
    is another interpreter (here the venv's base interpreter, without the project's packages)."""
    other = tmp_path / "other-python"
    other.mkdir()
    (other / "python").symlink_to(sys._base_executable)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    return dict(env, PATH=f"{other}{os.pathsep}/usr/bin{os.pathsep}/bin", DVC_NO_ANALYTICS="1")


def test_stages_run_in_the_projects_venv_however_dvc_was_started(dvc_project, tmp_path):
    (dvc_project / ".venv").symlink_to(venv_bin().parent)  # the project's venv, as `make` creates it
    set_params(dvc_project, lambda p: p["prepare_mlm"].update(vocab_size=150))
    result = subprocess.run([venv_bin() / "dvc", "repro", "prepare_mlm"], capture_output=True, text=True,
                            env=without_the_venv_on_path(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Running stage 'prepare_mlm'" in result.stdout
    assert json.loads(Path("data/bin/mlm/caps.json").read_text())["vocab_size"] == 150


def test_without_the_projects_venv_the_first_stage_fails_saying_how_to_fix_it(dvc_project, tmp_path):
    set_params(dvc_project, lambda p: p["prepare_mlm"].update(vocab_size=150))
    result = subprocess.run([venv_bin() / "dvc", "repro", "prepare_mlm"], capture_output=True, text=True,
                            env=without_the_venv_on_path(tmp_path))
    assert result.returncode != 0
    assert "Running stage 'prepare_mlm'" not in result.stdout  # it stopped before any work
    assert f"error: {tmp_path / 'other-python' / 'python'} lacks " in result.stderr, result.stderr
    assert "sentencepiece" in result.stderr
    assert "make" in result.stderr and "source .venv/bin/activate" in result.stderr, result.stderr


@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    """A tiny git + DVC project after `dvc repro fetch_glue@sst2` only (seconds: no torch)."""
    root = tmp_path_factory.mktemp("fetched")
    build_dvc_project(root, stages=["fetch_glue@sst2"])
    return root


def test_a_stage_refused_under_dvc_repro_says_how_to_get_its_last_outputs_back(fetched, tmp_path, monkeypatch):
    enter_copy(fetched, tmp_path, monkeypatch)
    before = {p.name: sha256(p) for p in Path("data/raw/sst2").iterdir()}
    dev = Path(os.environ["DATA_MIRROR"]) / "sst2" / "dev.tsv"
    lines = dev.read_text().splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\tmaybe"
    dev.write_text("\n".join(lines) + "\n")
    set_params(Path.cwd(), lambda p: p["datasets"]["sst2"]["files"]["dev.tsv"].update(sha256=sha256(dev)))
    result, _ = repro("fetch_glue@sst2", check=False)
    assert result.returncode != 0
    assert f"{dev}:4: label 'maybe' is not one of the task's labels" in result.stderr
    assert not Path("data/raw/sst2").exists()  # DVC removes a stage's outputs before running it
    assert ("DVC removed this stage's earlier outputs before running it; `dvc checkout fetch_glue@sst2` brings "
            "back the last good ones") in result.stderr, result.stderr
    run("dvc", "checkout", "fetch_glue@sst2")
    assert {p.name: sha256(p) for p in Path("data/raw/sst2").iterdir()} == before


def test_a_failed_dvc_exp_run_says_how_to_get_params_yaml_back(fetched, tmp_path, monkeypatch):
    enter_copy(fetched, tmp_path, monkeypatch)
    result = run("dvc", "exp", "run", "-S", "pretrain.sizes=[L2-H256,L9-H999]", "fetch_glue@sst2", check=False)
    assert result.returncode != 0
    assert "pretrain.sizes.1: 'L9-H999' is not a size in models" in result.stderr, result.stderr
    assert "`git checkout params.yaml` brings back the committed ones" in result.stderr, result.stderr
    assert "warnings before this stage name outputs of stages that have never run" in result.stderr, result.stderr
    assert run("git", "status", "--porcelain", "params.yaml").stdout.strip() == "M params.yaml"
    run("git", "checkout", "params.yaml")
    assert run("git", "status", "--porcelain", "params.yaml").stdout == ""


def test_a_failed_dvc_exp_run_temp_leaves_the_workspace_and_gives_no_restore_hint(fetched, tmp_path, monkeypatch):
    enter_copy(fetched, tmp_path, monkeypatch)
    result = run("dvc", "exp", "run", "--temp", "-S", "pretrain.sizes=[L2-H256,L9-H999]", "fetch_glue@sst2",
                 check=False)
    assert result.returncode != 0
    assert "pretrain.sizes.1: 'L9-H999' is not a size in models" in result.stderr, result.stderr
    assert "git checkout params.yaml" not in result.stderr and "dvc checkout" not in result.stderr, result.stderr
    assert run("git", "status", "--porcelain").stdout == ""
    assert Path("data/raw/sst2").is_dir()
