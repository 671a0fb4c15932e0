"""The whole pipeline through `dvc repro` on the tiny mirror with tiny models: every stage runs, the
metrics and plots are visible to DVC, and a change re-runs only what depends on it."""
import json
import shutil

import pytest
import yaml

from conftest import REPO, set_params, tiny_training
from profiles.overrides import merge
from stages import check
from test_pipeline_dvc import build_dvc_project, enter_copy, repro, run


def tiny_pipeline(p):
    """The CI profile (update budgets, fixed threads) at the tiny scale."""
    merge(p, yaml.safe_load((REPO / "profiles/ci.yaml").read_text()))
    tiny_training(p)
    p["data"]["glue_tasks"] = ["sst2"]
    p["pretrain"]["sizes"] = p["train_mt"]["sizes"] = ["T1"]
    p["compress"] = {"sparsities": [0.0, 0.5], "pruning": "global", "bits": [4], "granularity": "channel",
                     "onnx_sparsities": [0.0], "int8_min_agreement": 0.9, "int8_check_examples": 32,
                     "recovery": {"seconds": None, "updates": None}}
    p["evaluate"].update(threads=1, repeats=2, latency_examples=2, batch_size=8, bootstrap=100, beam=2,
                         max_test_sentences=8)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    result, ran = build_dvc_project(root, tiny_pipeline)
    assert {"pretrain@T1", "finetune@T1-sst2", "train_mt@T1", "compress_glue@T1-sst2", "compress_mt@T1",
            "evaluate_glue@T1-sst2", "evaluate_mt@T1", "tabulate", "report"} <= ran, result.stdout
    return root


@pytest.fixture
def project(pipeline, tmp_path, monkeypatch):
    return enter_copy(pipeline, tmp_path, monkeypatch)


def test_metrics_and_plots_are_visible_to_dvc(project):
    metrics = json.loads(run("dvc", "metrics", "show", "--json").stdout)
    shown = json.dumps(metrics)
    assert "accuracy_onnx_int8" in shown and "bleu_fp32" in shown
    plots = run("dvc", "plots", "show", "--json").stdout
    assert "reports/figures/frontier.png" in plots and "reports/curves/pretrain-T1.csv" in plots
    assert (project / "reports/report.md").is_file()


def test_nothing_reruns_and_a_report_param_reruns_only_the_report(project):
    _, ran = repro()
    assert ran == set()
    set_params(project, lambda p: p["report"].update(max_bytes=1000))
    _, ran = repro()
    assert ran == {"report"}


def test_an_evaluation_param_reevaluates_without_recompressing(project):
    set_params(project, lambda p: p["evaluate"].update(bootstrap=150))
    _, ran = repro()
    assert ran == {"evaluate_glue@T1-sst2", "evaluate_mt@T1", "tabulate", "report"}


def test_a_library_change_reruns_only_the_stages_that_import_it(project):
    """dvc.yaml's deps are the code each stage imports (test_code_shape), so editing one library module
    (here the evaluation metrics) invalidates exactly the stages whose code reaches it; `dvc repro` then runs
    those, and downstream of them only what reads their outputs."""
    from test_code_shape import code_closure, pipeline_stages
    module = "lib/metrics.py"
    importers = {name for name, stage in pipeline_stages().items() if module in code_closure(stage["module"])}
    instances = run("dvc", "stage", "list", "--name-only").stdout.split()
    expected = {name for name in instances if name.split("@")[0] in importers}
    assert expected and {name.split("@")[0] for name in expected} == {"evaluate_glue", "evaluate_mt"}
    with open(project / module, "a") as f:
        f.write("\n# an edit that changes no behaviour\n")
    assert set(json.loads(run("dvc", "status", "--json").stdout)) == expected
    _, ran = repro()
    assert expected <= ran and ran - expected <= {"tabulate", "report"}, ran  # timings in the rows change


def test_two_clean_runs_of_the_ci_profile_score_exactly_the_same(pipeline, tmp_path_factory, monkeypatch):
    again = tmp_path_factory.mktemp("again")
    build_dvc_project(again, tiny_pipeline)
    first, second = pipeline / "project", again / "project"

    def scores(project):  # every metric but the timings
        metrics = check.flatten(json.loads((project / "reports/metrics.json").read_text()))
        return {k: v for k, v in metrics.items() if not k.rsplit("/", 1)[-1].startswith(check.TIMINGS)}
    assert scores(first) == scores(second) and any("accuracy" in k for k in scores(first))
    # the gate itself: the first run's baseline, the second run checked against it, rule by rule
    monkeypatch.chdir(first)
    run("python", "-m", "stages.check", "--update")
    shutil.copy(first / "reports/baseline-ci.json", second / "reports/baseline-ci.json")
    monkeypatch.chdir(second)
    checked = run("python", "-m", "stages.check", check=False)
    assert "the same hardware" in checked.stdout
    rows = {line.split()[0]: line.split() for line in checked.stdout.splitlines()[1:]
            if line.split() and "/" in line.split()[0]}
    # every score passes exactly; a timing is held to the latency tolerance, and the exit status follows it
    # (the tiny models' sub-millisecond timings can double between two runs on a shared 2-core machine:
    # seen 0.96 vs 2.31 ms, so whether they pass is not asserted)
    assert all(rows[k][3] == "exact" and rows[k][-1] == "ok" for k in scores(second))
    timings = set(rows) - set(scores(second))
    assert timings and all(rows[k][3:5] == ["at", "most"] for k in timings)
    assert checked.returncode == int(any(rows[k][-1] == "REGRESSED" for k in timings))
