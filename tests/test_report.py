"""Report and regression check on the tiny trained models: every figure exists with labelled axes, the
report's tables match variants.csv, verdicts are stated, and the check catches a degraded metric. Also
the report's parts on tiny inputs made here: the unigram baseline, the throughput table, the parameter
counts, the pretraining control."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from PIL import Image

from conftest import set_params
from stages import check, compress, evaluate, report, tabulate
from lib.errors import StageError
from lib.model_size import model_non_embedding_params, non_embedding_params

FIGURES = ["mlm_curves", "mt_curves", "throughput", "sparsity", "bits", "frontier", "latency"]
CONTROL_VALUE = 12.3456  # the pretraining control's score: a number no other table has


def configure(p):
    p["data"]["glue_tasks"] = ["sst2"]
    p["compress"] = {"sparsities": [0.0, 0.5, 0.9], "pruning": "global", "bits": [4, 8], "granularity": "channel",
                     "onnx_sparsities": [0.0], "int8_min_agreement": 0.9, "int8_check_examples": 32,
                     "recovery": {"seconds": None, "updates": None}}
    p["evaluate"].update(threads=1, repeats=2, latency_examples=4, batch_size=8, bootstrap=200, beam=2,
                         max_test_sentences=12)
    p["datasets"]["sst2"]["label_names"] = ["negative", "positive"]


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
        # a pretraining control row, as a randomly initialised fine-tuning would add it
        variants = pd.read_csv("reports/variants.csv")
        control = variants[(variants.variant == "s0.00-fp32") & (variants["size"] == "T1")
                           & (variants.metric == "accuracy")].assign(init="random", value=CONTROL_VALUE,
                                                                      ci_low=5.0, ci_high=20.0)
        pd.concat([variants, control]).to_csv("reports/variants.csv", index=False)
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
    assert "## 3. Training throughput on this hardware" in text and "bits below unigram" in text
    # the control is in its own section and nowhere else
    control = text[text.index("## 8. Does pretraining help?"):text.index("## Verdicts")]
    assert re.search(r"\| sst2 \| T1 \| accuracy \| [^|]+ \| 12\.35 \[5, 20\] \| (pretraining helps|no measurable"
                     r"|random initialisation)", control), control
    assert text.count("12.35") == 1
    metrics = json.loads((reported / "reports/metrics.json").read_text())
    assert set(metrics) == {"sst2", "translation", "pretrain"}
    unigram = json.loads((reported / "data/bin/mlm/unigram.json").read_text())["valid_bits"]
    assert metrics["pretrain"]["unigram_bits"] == unigram and set(metrics["pretrain"]) == {"unigram_bits", "T1", "T2"}
    assert all(metrics["pretrain"][s]["valid_loss_bits"] > 0 for s in ("T1", "T2"))
    assert {"accuracy_fp32", "accuracy_onnx_int8", "latency_ms_onnx_int8"} <= set(metrics["sst2"]["T1"])
    # the recommended variants beside their dense models, from the predictions files
    examples = text[text.index("## Where the recommended variant and its dense model disagree"):]
    for task in ("sst2", "translation"):
        assert re.search(rf"\*\*{task}\*\*: (the recommendation is the dense model itself|no variant is recommended"
                         rf"|\S+ \S+ against s0\.00-fp32: they differ on \d+ of \d+ examples)", examples), \
            (task, examples)
    assert "**sst2**: T1-sst2 " in examples  # the tiny sst2 models learned the task: one is recommended


def test_disagreements_are_read_from_the_predictions_files(tmp_path, monkeypatch):
    from lib.predictions import disagreement_table, translation_predictions, write_predictions
    monkeypatch.chdir(tmp_path)
    kept = Path("reports/predictions/L2-sst2")
    kept.mkdir(parents=True)
    dense = [{"split": "dev", "index": i, "sentence1": f"s|{i}", "gold": "positive", "predicted": "positive",
              "probability": "0.9000"} for i in range(8)]
    variant = [dict(r, predicted="negative", probability="0.6000") if r["index"] in (2, 5, 7) else r for r in dense]
    write_predictions(kept / "s0.00-fp32.tsv", dense)
    write_predictions(kept / "onnx-s0.50-int8.tsv", variant)
    table = disagreement_table("L2-sst2", "onnx-s0.50-int8", "s0.00-fp32", n=2)
    assert "they differ on 3 of 8 examples" in table
    assert "| dev 2 | s\\|2 | positive | positive (0.90) | negative (0.60) |" in table  # the first two, in order
    assert "| dev 5 |" in table and "| dev 7 |" not in table
    kept = Path("reports/predictions/mt-L2")
    kept.mkdir(parents=True)
    sources, references = ["a", "b", "c"], ["le chat", "un chien noir", "la maison"]
    write_predictions(kept / "s0.00-fp32.tsv", translation_predictions(sources, references, references))
    write_predictions(kept / "onnx-s0.00-int4.tsv",
                      translation_predictions(sources, references, ["le chat", "un chien", "xyz"]))
    table = disagreement_table("mt-L2", "onnx-s0.00-int4", "s0.00-fp32")
    assert "they differ on 2 of 3 examples" in table
    # the largest chrF difference first: "xyz" for "la maison", then "un chien"
    assert table.index("| c | la maison | la maison | xyz |") < table.index("| b | un chien noir |")
    assert "missing" in disagreement_table("mt-L2", "onnx-s0.00-int8", "s0.00-fp32")


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
    from lib.verdicts import combine, ordered
    assert ordered([8.29, 8.39, 8.51], 0.05) == "does not hold"  # the default run's depth sweep
    assert ordered([8.40, 8.39, 8.44], 0.05) == "inconclusive"   # its width sweep: ties
    assert combine(["does not hold", "inconclusive"]) == "does not hold"
    assert combine(["holds", "inconclusive"]) == "inconclusive"
    assert combine(["holds", "holds"]) == "holds"
    assert combine(["holds", "does not hold"]) == "inconclusive"
    assert combine([]) == "inconclusive"


def test_a_model_no_better_than_constant_prediction_is_neither_shipped_nor_compared():
    from lib.verdicts import recommendation, verdict_robustness

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


# ---------------------------------------------------------------- the report's parts, on tiny inputs

GRID = {"A": SimpleNamespace(layers=1, hidden=32, ffn=64), "B": SimpleNamespace(layers=2, hidden=32, ffn=64)}


def write_training(stage: str, models: str, tokens_per_s: dict, summary: dict | None = None) -> None:
    """Curves of two points per size (the last one at `tokens_per_s`, the first one faster) and summaries."""
    for name, rate in tokens_per_s.items():
        Path("reports/curves").mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"updates": [4, 8], "seconds": [2.0, 4.0], "tokens": [3 * rate, 4 * rate],
                      "flops": [1e8, 1e9], "valid_loss": [11.0, 10.0], "valid_ppl": [2 ** 11, 2 ** 10],
                      "valid_bleu": [0.0, 1.0]}).to_csv(f"reports/curves/{stage}-{name}.csv", index=False)
        Path(f"models/{models}/{name}").mkdir(parents=True, exist_ok=True)
        Path(f"models/{models}/{name}/summary.json").write_text(
            json.dumps(summary if summary is not None else {"precision": "bf16", "hardware": "test CPU"}))


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("reports/figures").mkdir(parents=True)
    write_training("pretrain", "pretrain", {"A": 500, "B": 300})  # B: 2x the parameters, 1.67x slower
    write_training("train_mt", "mt", {"A": 500, "B": 250}, summary={})  # 2x slower; an older summary
    return tmp_path


def test_translation_sizes_count_encoder_and_decoder(tiny):
    mt = report.read_curves("train_mt", ["A", "B"], GRID, "mt")
    mlm = report.read_curves("pretrain", ["A", "B"], GRID, "mlm")
    for name, size in GRID.items():
        assert set(mt[mt["size"] == name].parameters) == {model_non_embedding_params(size, "mt")}
        assert set(mlm[mlm["size"] == name].parameters) == {non_embedding_params(size)}
    assert model_non_embedding_params(GRID["A"], "mt") > non_embedding_params(GRID["A"])
    assert set(mt.precision) == {"unknown"} and set(mlm.hardware) == {"test CPU"}
    Path("models/mt/B/summary.json").unlink()
    with pytest.raises(StageError, match="models/mt/B/summary.json: missing"):
        report.read_curves("train_mt", ["A", "B"], GRID, "mt")


def test_throughput_table_is_final_tokens_over_seconds(tiny):
    mlm = report.read_curves("pretrain", ["A", "B"], GRID, "mlm")
    mt = report.read_curves("train_mt", ["A", "B"], GRID, "mt")
    text = report.figure_throughput(mlm, mt)
    assert (tiny / "reports/figures/throughput.png").stat().st_size > 1000
    n = model_non_embedding_params(GRID["B"], "mt")
    # the last point: 4 * 250 tokens and 1e9 FLOPs in 4 s (the first point ran at 1.5 * 250 tokens/s)
    assert f"| translation | B | {n} | 250 | 2.5e+08 | unknown | unknown |" in text
    assert f"| pretraining | B | {non_embedding_params(GRID['B'])} | 300 | 2.5e+08 | bf16 | test CPU |" in text
    assert "pretraining: B has 2.0x the non-embedding parameters of A and trains 1.7x fewer tokens/s, so a " \
           "token costs it less than proportionally more" in text
    assert "translation: B has 2.0x the non-embedding parameters of A and trains 2.0x fewer tokens/s, so a " \
           "token costs it proportionally more or worse" in text
    assert "validation included" in text


def test_masked_lm_figure_draws_the_unigram_baseline(tiny):
    mlm = report.read_curves("pretrain", ["A", "B"], GRID, "mlm")
    fig = report.draw_mlm(mlm, 10.5)
    for ax in fig.axes:  # every panel: perplexity 2^bits, dashed, labelled; and no legend in the data
        (line,) = [line for line in ax.get_lines() if line.get_label() == "unigram baseline"]
        assert list(line.get_ydata()) == [2 ** 10.5] * 2 and line.get_linestyle() == "--"
        assert ax.get_legend() is None
    assert len(fig.legends) == 1 and "unigram baseline" in [t.get_text() for t in fig.legends[0].get_texts()]
    assert {ax.get_xlabel() for ax in fig.axes} >= {"training wall-clock (s)", "updates"}
    assert any("FLOPs" in ax.get_xlabel() and ax.get_xscale() == "log" for ax in fig.axes)
    text = report.figure_mlm_curves(mlm, 10.5)
    assert "bits below unigram" in text and re.search(r"\| A \| 1 \| 32 \| \d+ \| 8 \| 4 \| 10 \| 0\.5 \|", text)
    with pytest.raises(StageError, match="data/bin/mlm/unigram.json: missing"):
        report.read_unigram()


def test_pretraining_control_compares_intervals():
    from lib.verdicts import verdict_pretraining
    assert verdict_pretraining((80, 75, 85), (60, 55, 65)) == "pretraining helps at this budget"
    assert verdict_pretraining((60, 55, 65), (80, 75, 85)) == "random initialisation does better at this budget"
    # the pretrained interval lies above the random score, but the random interval reaches the pretrained
    assert verdict_pretraining((70, 62, 78), (60, 52, 71)).startswith("no measurable difference at this budget")

    def row(value, init, metric="accuracy", fmt="fairseq fp32"):
        return {"task": "sst2", "size": "A", "metric": metric, "split": "dev", "format": fmt, "target_sparsity": 0.0,
                "value": value, "ci_low": value - 5, "ci_high": value + 5, "init": init}
    rows = pd.DataFrame([row(80.0, "pretrained"), row(30.0, "pretrained", fmt="simulated k-bit")])
    control = pd.DataFrame([row(60.0, "random"), row(0.7, "random", metric="loss")])
    text = report.pretraining_control(rows, control)
    assert "| sst2 | A | accuracy | 80 [75, 85] | 60 [55, 65] | pretraining helps at this budget |" in text
    assert "| loss |" not in text and text.count("\n| sst2") == 1  # the headline metric, dense only
    assert "control was not run" in report.pretraining_control(rows, control.iloc[:0])


def test_variants_without_an_init_column_are_pretrained(tmp_path):
    pd.DataFrame({"task": ["sst2", "sst2"], "init": ["random", None]}).to_csv(tmp_path / "with.csv", index=False)
    pd.DataFrame({"task": ["sst2"]}).to_csv(tmp_path / "without.csv", index=False)
    assert list(report.read_variants(tmp_path / "with.csv").init) == ["random", "pretrained"]
    assert list(report.read_variants(tmp_path / "without.csv").init) == ["pretrained"]


def test_a_figure_redrawn_unchanged_is_the_same_file(tmp_path, monkeypatch):
    """No timestamp and no random element ids in the SVG: git and DVC see a redrawn report as unchanged."""
    from lib import figures
    monkeypatch.setattr(figures, "FIGURES", tmp_path)
    drawn = []
    for _ in range(2):
        fig, ax = figures.plt.subplots()
        ax.plot([1, 2, 3], [3, 1, 2])
        figures.save(fig, "f")
        drawn.append({s: (tmp_path / f"f.{s}").read_bytes() for s in ("png", "svg")})
    assert drawn[0] == drawn[1] and b"<dc:date>" not in drawn[0]["svg"]
