"""Report and regression check on the tiny trained models: every figure exists with labelled axes, the
report's tables match variants.csv, verdicts are stated, and the check catches a degraded metric."""
import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from conftest import set_params
from stages import check, compress, evaluate, report, tabulate

FIGURES = ["mlm_curves", "mt_curves", "sparsity", "bits", "frontier", "latency"]


def configure(p):
    p["data"]["glue_tasks"] = ["sst2"]
    p["compress"] = {"sparsities": [0.0, 0.5, 0.9], "pruning": "global", "bits": [4, 8], "granularity": "channel",
                     "onnx_sparsities": [0.0], "recovery": {"seconds": None, "updates": None}}
    p["evaluate"].update(threads=1, repeats=2, latency_examples=4, batch_size=8, bootstrap=200, beam=2,
                         max_test_sentences=12)


@pytest.fixture(scope="module")
def reported_once(trained_project):
    """Compress, evaluate, tabulate and report once for the module (the tests only read, or restore)."""
    set_params(trained_project, configure)
    cwd = os.getcwd()
    os.chdir(trained_project)
    try:
        for size in ("T1", "T2"):
            for args in (["glue", size, "sst2"], ["mt", size]):
                compress.main(args)
                evaluate.main(args)
        tabulate.main([])
        report.main([])
    finally:
        os.chdir(cwd)
    return trained_project


@pytest.fixture
def reported(reported_once, in_trained_project):
    metrics = (reported_once / "reports/metrics.json").read_text()
    yield reported_once
    (reported_once / "reports/metrics.json").write_text(metrics)


def test_report_has_every_figure_table_and_verdict(reported, monkeypatch):
    variants = pd.read_csv("reports/variants.csv")
    assert set(variants.variant) >= {"s0.00-fp32", "s0.90-q4", "onnx-s0.00-fp32", "onnx-s0.00-int8"}
    assert variants.value.notna().all()
    for name in FIGURES:
        for suffix in ("png", "svg"):
            assert (reported / "reports/figures" / f"{name}.{suffix}").stat().st_size > 1000
        Image.open(reported / "reports/figures" / f"{name}.png").verify()
        svg = (reported / "reports/figures" / f"{name}.svg").read_text()
        assert "legend" in svg
    text = (reported / "reports/report.md").read_text()
    for claim in "abcd":
        assert re.search(rf"\| \({claim}\) [^|]+ \| \*\*(holds|does not hold|inconclusive)\*\* \|", text), claim
    # the tables are the numbers of variants.csv
    dense = variants[(variants.variant == "s0.00-fp32") & (variants.metric == "accuracy")]
    for row in dense.itertuples():
        assert f"{row.value:.4g}" in text
    assert "## Recommendation" in text and "torch" in text
    metrics = json.loads((reported / "reports/metrics.json").read_text())
    assert set(metrics) == {"sst2", "translation"}
    assert {"accuracy_fp32", "accuracy_onnx_int8", "latency_ms_onnx_int8"} <= set(metrics["sst2"]["T1"])


def test_check_passes_on_its_baseline_and_fails_on_a_degraded_metric(reported, capsys):
    check.main(["--update"])
    check.main([])
    assert "0 of" in capsys.readouterr().out
    metrics = json.loads((reported / "reports/metrics.json").read_text())
    metrics["sst2"]["T1"]["accuracy_fp32"] -= 10
    (reported / "reports/metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(SystemExit) as e:
        check.main([])
    assert e.value.code == 1
    out = capsys.readouterr().out
    # the tiny run counts updates on a fixed thread count: it repeats bit for bit, so scores are exact
    assert re.search(r"sst2/T1/accuracy_fp32\s+\S+\s+\S+\s+exact\s+CHANGED", out)
    assert "1 of" in out and "the same hardware" in out


def test_check_without_a_baseline_says_how_to_make_one(reported):
    (reported / "reports/baseline.json").unlink(missing_ok=True)
    result = subprocess.run([sys.executable, "-m", "stages.check"], capture_output=True, text=True,
                            cwd=reported, env=dict(os.environ, PYTHONPATH=str(reported)))
    assert result.returncode == 2
    assert "python -m stages.check --update" in result.stderr


def test_one_contradicting_sweep_refutes_a_claim_about_all_sizes():
    from stages.report import combine, ordered
    assert ordered([8.29, 8.39, 8.51], 0.05) == "does not hold"  # the default run's depth sweep
    assert ordered([8.40, 8.39, 8.44], 0.05) == "inconclusive"   # its width sweep: ties
    assert combine(["does not hold", "inconclusive"]) == "does not hold"
    assert combine(["holds", "inconclusive"]) == "inconclusive"
    assert combine(["holds", "holds"]) == "holds"
    assert combine(["holds", "does not hold"]) == "inconclusive"
    assert combine([]) == "inconclusive"


def test_a_model_no_better_than_constant_prediction_is_neither_shipped_nor_compared():
    from stages.report import recommendation, verdict_robustness

    def rows(task, size, parameters, values, constant):
        return [{"task": task, "size": size, "parameters": parameters, "variant": variant, "format": fmt,
                 "target_sparsity": sparsity, "sparsity": sparsity, "bits": bits, "metric": "accuracy",
                 "value": value, "ci_low": value - 6, "ci_high": value + 6, "constant_score": constant,
                 "bytes_zip": 1e6 * (1 - sparsity), "latency_ms": None}
                for (variant, fmt, sparsity, bits), value in zip(
                    [("s0.00-fp32", "fairseq fp32", 0.0, 32), ("s0.50-fp32", "fairseq fp32", 0.5, 32)], values)]
    # rte: both sizes at the majority rate; sst2: S and M learned (M lost less to pruning), L did not
    table = pd.DataFrame(rows("rte", "S", 1, [54.5, 54.0], 54.0) + rows("rte", "L", 9, [54.0, 54.0], 54.0)
                         + rows("sst2", "S", 1, [70.0, 50.0], 51.0) + rows("sst2", "M", 4, [72.0, 71.0], 51.0)
                         + rows("sst2", "L", 9, [51.0, 51.0], 51.0))
    cfg = type("cfg", (), {"max_bytes": None, "max_latency_ms": None})
    text = recommendation(table, cfg)
    assert "**rte**: nothing to ship: no variant beats constant prediction (accuracy 54.00" in text
    assert "**sst2**: train **M**, ship **s0.00-fp32**" in text and "L s0" not in text  # not L at 51
    _, verdict, evidence = verdict_robustness(table)
    assert verdict == "holds"  # M vs S on sst2; L on sst2 and both rte sizes have nothing to lose
    assert "the larger lost less in 1, more in 0, within the confidence intervals in 0" in evidence
    assert "left out, no better than constant prediction: rte S, L (constant prediction: 54); sst2 L (" in evidence
