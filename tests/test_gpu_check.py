"""bench.gpu_check, the one-go check of the CUDA path: its CPU dry run does every step (tiny dvc repro through
evaluate, curves and checkpoints checked, the training benchmark, the JSON and markdown), so the command is
known to work before a GPU is there; and the checks it makes can fail."""
import json
import re
from pathlib import Path

import pytest

from bench import gpu_check
from conftest import REPO


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_check")
    results = gpu_check.main(["--dry-run", "--out", str(root / "gpu-check.json"), "--work", str(root / "work")])
    return root, results


def test_dry_run_passes_every_step_and_writes_the_report(dry_run):
    root, results = dry_run
    assert results["ok"], results["failures"]
    assert json.loads((root / "gpu-check.json").read_text()) == results
    assert results["environment"]["torch"] and results["environment"]["gpu"] is None

    [(run, pipeline)] = results["pipeline"].items()
    assert run == "cpu" and pipeline["ok"]
    stages = [c for c in pipeline["curves"] if c["curve"].startswith("reports/curves/")]
    assert [c["curve"] for c in stages] == ["reports/curves/pretrain-T1.csv", "reports/curves/finetune-T1-sst2.csv",
                                            "reports/curves/train_mt-T1.csv"]
    assert all(c["falls"] and c["points"] >= 2 for c in stages)
    assert len(pipeline["curves"]) == 5  # and one recovery run per pruned model, classifier and translation
    assert len(pipeline["checkpoints"]) == 5
    assert all(c["ok"] and c["trained"] == "cpu fp32" for c in pipeline["checkpoints"])
    assert set(pipeline["evaluated_rows"]) == {"T1-sst2", "mt-T1"} and all(pipeline["evaluated_rows"].values())

    bench = results["benchmark"]
    assert bench["ok"] and bench["device"] == "cpu" and [r["size"] for r in bench["rows"]] == ["T1", "T2"]
    for row in bench["rows"]:
        for loop in ("fairseq", "transformers"):
            assert row[loop]["tokens_per_s"] > 0 and row[loop]["peak_gpu_mb"] is None  # measured on a GPU only

    # every evaluation row says where it was scored: all on the CPU here
    assert pipeline["evaluation_devices"] and set(pipeline["evaluation_devices"].values()) == {"cpu"}
    assert pipeline["evaluation_device_errors"] == []
    assert gpu_check.device_errors({"T1-sst2/s0.50-q8": "cpu", "T1-sst2/s0.00-fp32": "cuda: H100",
                                    "T1-sst2/onnx-s0.00-int8": "cuda: H100"}, "fp16") == [
        "T1-sst2/s0.50-q8 scored on cpu, expected cuda", "T1-sst2/onnx-s0.00-int8 scored on cuda: H100, expected cpu"]
    # the loaders at the paper's batch shapes, with 0, 1 and auto workers (auto is one on a 2-core machine)
    loader = results["loader"]
    assert loader["ok"] and {(r["task"], r["workers"]) for r in loader["rows"]} == {
        (t, w) for t in ("mlm", "mt") for w in (0, 1)}
    assert all(r["batches_per_s"] > 0 for r in loader["rows"])

    markdown = (root / "gpu-check.md").read_text()
    assert "pass" in markdown.splitlines()[0] and "## Training throughput" in markdown and "## Loaders" in markdown
    assert {p.name for p in root.glob("*.log")} == {"gpu-check-cpu.log", "gpu-check-bench-data.log",
                                                    "gpu-check-bench.log", "gpu-check-loader.log"}


def test_the_checks_fail_on_what_a_gpu_run_must_not_show(dry_run, tmp_path):
    root, _ = dry_run
    project = root / "work/cpu/project"
    # a CPU-trained checkpoint is not what an fp16 run must leave
    found = gpu_check.checkpoint(project, Path("models/pretrain/T1/checkpoint.pt"), "fp16")
    assert found["trained"] == "cpu fp32" and not found["ok"]
    assert not gpu_check.checkpoint(project, Path("models/pretrain/T9/checkpoint.pt"), "cpu")["ok"]
    # a curve whose loss rises
    curve = tmp_path / "reports/curves/pretrain-T1.csv"
    curve.parent.mkdir(parents=True)
    text = (project / "reports/curves/pretrain-T1.csv").read_text().splitlines()
    curve.write_text("\n".join([text[0], *reversed(text[1:])]) + "\n")
    found = gpu_check.curve(tmp_path, Path("reports/curves/pretrain-T1.csv"))
    assert found["falls"] is False and not found["ok"]
    failures = gpu_check.failures({"pipeline": {"fp16": {"ok": True, "curves": [found], "checkpoints": [],
                                                         "evaluation_device_errors": ["m/s0.50-q8 scored on cpu"]}},
                                   "benchmark": {"ok": False, "error": "exit status 1", "log": "x.log"},
                                   "loader": {"ok": False, "error": "stopped after 240 s", "log": "y.log"}})
    assert len(failures) == 4 and "valid loss" in failures[0] and "scored on cpu" in failures[1]
    assert "exit status 1" in failures[2] and "stopped after 240 s" in failures[3]


def test_without_a_gpu_the_real_check_stops_at_once(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(SystemExit, match="sees no GPU; use --dry-run"):
        gpu_check.main(["--out", str(tmp_path / "gpu-check.json")])


def test_the_wheel_list_pins_what_requirements_txt_pins():
    pins = lambda text: dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", text, re.M))
    norm = lambda pinned: {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in pinned.items()}
    wheels, requirements = (norm(pins((REPO / path).read_text())) for path in ("bench/gpu-wheels.txt", "requirements.txt"))
    shared = wheels.keys() & requirements.keys()
    assert {"ve-fairseq", "dvc", "pydantic", "optimum", "transformers"} <= shared
    assert {k: wheels[k] for k in shared} == {k: requirements[k] for k in shared}
    assert "torch" not in wheels
