"""Profiles as DVC experiments (profiles/overrides.py, `make repro PROFILE=NAME`): the `dvc exp run -S`
overrides a profile becomes, checked against DVC's own override code; a bad profile stopped before any
stage runs, naming its file and key; and params.yaml left as committed. No training: the DVC project here
has one stage that writes down the params it ran with."""
import copy
import json
import re
import sys

import pytest
import yaml

from conftest import REPO
from profiles import overrides as ov
from test_pipeline_dvc import run

SCRIPT = REPO / "profiles/overrides.py"

BASE = {"data": {"tasks": ["sst2"], "translation": {"dataset": "multi30k", "source": "en"}},
        "models": {"mlm": {"A": {"layers": 2, "hidden": 256}, "B": {"layers": 4, "hidden": 256}},
                   "mt": {"A": {"layers": 2, "hidden": 128}}},
        "train": {"budget": {"seconds": 270, "updates": None}, "lr": 0.0005, "path": "reports/baseline.json"},
        "check": {"tolerance": {"accuracy": 2.0}}}
PROFILE = {"data": {"tasks": ["sst2", "rte"], "translation": {"dataset": "wmt14_en_fr"}},
           "models": {"mlm": {"L6-H768": {"layers": 6, "hidden": 768}}},
           "train": {"budget": {"seconds": None, "updates": 200}, "lr": 2e-05, "path": "reports/baseline-ci.json"},
           "check": {"tolerance": {"bleu": 1.5}}}


def dvc_applies(tmp_path, base: dict, overrides: list) -> dict:
    """params.yaml after `dvc exp run -S OVERRIDES`, by DVC's own code, as DVC reads it back."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    return ov.dvc_applied(path.read_text(), overrides, path)


def test_overrides_set_each_leaf_replace_lists_and_replace_models_whole(tmp_path):
    overrides = ov.overrides(BASE, PROFILE)
    assert overrides == [
        "data.tasks=[sst2,rte]",                       # a list replaces
        "data.translation.dataset=wmt14_en_fr",        # a mapping merges key by key: source stays
        "~models", "+models={mlm:{L6-H768:{layers:6,hidden:768}}}",   # the model grid replaced whole
        "train.budget.seconds=null", "train.budget.updates=200",
        "train.lr=2e-05",
        "train.path=reports/baseline-ci.json",
        "+check.tolerance.bleu=1.5",                   # a key params.yaml does not have yet
    ]
    merged = ov.merge(copy.deepcopy(BASE), PROFILE)
    assert merged["data"]["translation"] == {"dataset": "wmt14_en_fr", "source": "en"}
    assert merged["models"] == {"mlm": {"L6-H768": {"layers": 6, "hidden": 768}}}   # no mt, no A/B left
    assert merged["check"]["tolerance"] == {"accuracy": 2.0, "bleu": 1.5}
    assert dvc_applies(tmp_path, BASE, overrides) == merged


@pytest.mark.parametrize("value", ["0", "1e3", "true", "null", "a b", "it's", 'say "x"', "x:y", "", "[a]"])
def test_strings_reach_dvc_as_strings(tmp_path, value):
    overrides = ov.overrides({"k": "old"}, {"k": value})
    assert dvc_applies(tmp_path, {"k": "old"}, overrides) == {"k": value}


def test_values_dvc_cannot_take_are_refused():
    with pytest.raises(ov.ProfileError, match=r"k: .*\$\{"):
        ov.overrides({"k": "old"}, {"k": "${other}"})   # DVC would resolve it as an interpolation
    with pytest.raises(ov.ProfileError, match="key 'a b'"):
        ov.overrides({"models": {}}, {"models": {"a b": 1}})


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "profiles").glob("*.yaml")))
def test_every_profile_becomes_overrides_of_params_yaml(name, monkeypatch):
    """Each committed profile over the committed params.yaml: DVC's overrides give the merge, and the
    params schema accepts it (compute raises otherwise)."""
    monkeypatch.chdir(REPO)
    overrides = ov.compute(name)
    profile = yaml.safe_load((REPO / f"profiles/{name}.yaml").read_text())
    assert len(overrides) >= len(profile)
    if "models" in profile:
        assert overrides[overrides.index("~models") + 1].startswith("+models={")


def test_printed_overrides_are_shell_words(monkeypatch):
    """`eval "dvc exp run ... $(python profiles/overrides.py ci)"` (README) passes each -S value intact."""
    monkeypatch.chdir(REPO)
    printed = run(sys.executable, str(SCRIPT), "ci").stdout
    words = run("bash", "-c", f'eval "set -- {printed.strip()}"; printf "%s\\n" "$@"').stdout.splitlines()
    assert words == [w for o in ov.compute("ci") for w in ("-S", o)]


def test_make_repro_with_a_profile_runs_a_temp_experiment():
    out = run("make", "-n", "-C", str(REPO), "repro", "PROFILE=ci").stdout
    assert "python profiles/overrides.py ci --run --temp" in out and "apply.py" not in out


# ----------------------------------------------------------------- a DVC project with one cheap stage

STAGE = ("python -c \"import json, yaml; p = yaml.safe_load(open('params.yaml')); json.dump({'sizes': "
         "p['pretrain']['sizes'], 'mlm': sorted(p['models']['mlm']), 'tasks': p['data']['glue_tasks']}, "
         "open('ran.json', 'w'))\"")


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A git + DVC repo with the real params.yaml (and datasets.yaml) and one stage that records the
    params it ran with, committed after one `dvc repro`."""
    monkeypatch.chdir(tmp_path)
    for name in ("params.yaml", "datasets.yaml"):   # the params, and the dataset catalog they name
        if (REPO / name).exists():
            (tmp_path / name).write_text((REPO / name).read_text())
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"record": {
        "cmd": STAGE, "params": ["pretrain.sizes", "models", "data.glue_tasks"], "outs": ["ran.json"]}}}))
    run("git", "init", "-q")
    run("git", "config", "user.email", "test@example.com")
    run("git", "config", "user.name", "test")
    run("dvc", "init", "-q")
    run("dvc", "repro", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "project")
    return tmp_path


def profile_run(name, *flags, check=True):
    return run(sys.executable, str(SCRIPT), name, "--run", *flags, check=check)


def experiments() -> dict:
    """{name: params.yaml's values} of the experiments of HEAD."""
    shown = json.loads(run("dvc", "exp", "show", "--json").stdout)
    return {e["name"]: e["data"]["params"]["params.yaml"]["data"]
            for rev in shown for e in (rev.get("experiments") or []) for e in e["revs"]}


def test_a_profile_runs_as_an_experiment_and_leaves_params_yaml_as_committed(project):
    ci = yaml.safe_load((REPO / "profiles/ci.yaml").read_text())
    default = json.loads((project / "ran.json").read_text())
    result = profile_run("ci", "--temp")
    assert "dvc exp run --temp -n ci -S" in result.stdout
    assert run("git", "status", "--porcelain").stdout == ""      # params.yaml, dvc.lock: as committed
    assert json.loads((project / "ran.json").read_text()) == default   # the workspace's outputs too
    committed = yaml.safe_load((project / "params.yaml").read_text())
    assert experiments()["ci"] == ov.merge(copy.deepcopy(committed), ci) != committed

    again = profile_run("ci", "--temp")   # a rerun replaces the experiment of this commit
    assert "replacing the experiment 'ci'" in again.stdout and list(experiments()) == ["ci"]

    run("dvc", "exp", "apply", "ci")      # the user's choice: its params and outputs in the workspace
    assert json.loads((project / "ran.json").read_text())["sizes"] == ci["pretrain"]["sizes"]
    assert yaml.safe_load((project / "params.yaml").read_text())["pretrain"]["sizes"] == ci["pretrain"]["sizes"]


def test_models_are_replaced_whole_in_the_experiment(project):
    paper = yaml.safe_load((REPO / "profiles/paper.yaml").read_text())
    profile_run("paper", "--temp")
    assert experiments()["paper"]["models"] == paper["models"]
    assert run("git", "status", "--porcelain").stdout == ""


@pytest.mark.parametrize("bad, key", [({"pretrain": {"sizez": ["L2-H256"]}}, r"pretrain\.sizez: unknown key"),
                                      ({"compress": {"bits": [1]}}, r"compress: bits\.0: 1 is outside"),
                                      ({"pretrain": {"sizes": ["L9-H999"]}}, r".*pretrain\.sizes\.0: .L9-H999. is not a size")])
def test_a_bad_profile_fails_naming_file_and_key_before_any_stage_runs(project, bad, key):
    (project / "bad.yaml").write_text(yaml.safe_dump(bad))
    run("git", "add", "bad.yaml")
    run("git", "commit", "-qm", "a bad profile")
    result = profile_run("bad.yaml", check=False)   # in the workspace: nothing may run there either
    assert result.returncode != 0
    assert re.search(rf"^error: bad\.yaml: .*\n(.*\n)*  {key}", result.stderr, re.M), result.stderr
    assert "dvc exp run" not in result.stdout and "Running stage" not in result.stdout + result.stderr
    assert experiments() == {} and run("git", "status", "--porcelain").stdout == ""


def test_an_unknown_profile_names_the_known_ones(project):
    result = profile_run("nope", check=False)
    assert result.returncode != 0 and "no such profile; known: ['ci', 'paper']" in result.stderr
