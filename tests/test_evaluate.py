"""Evaluation sanity on tiny trained models: a separable task scores near 100% and its 90%-pruned copy
lower; the CSV has a row with a value for every variant; broken ONNX files are named."""
import csv
import math
from pathlib import Path

import numpy as np
import pytest
from sacrebleu.metrics import BLEU

from conftest import set_params
from lib import metrics
from stages import compress, evaluate
from lib.errors import StageError


def read_rows(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def configure(p, onnx_sparsities=()):
    p["compress"] = {"sparsities": [0.0, 0.9, 0.99], "pruning": "global", "bits": [2, 8], "granularity": "channel",
                     "onnx_sparsities": list(onnx_sparsities), "int8_min_agreement": 0.9, "int8_check_examples": 32,
                     "recovery": {"seconds": None, "updates": None}}
    p["evaluate"].update(threads=1, repeats=2, latency_examples=4, batch_size=8, bootstrap=200, beam=2,
                         max_test_sentences=12)


def test_separable_task_scores_high_and_pruning_90_percent_costs_accuracy(in_trained_project):
    set_params(in_trained_project, configure)
    compress.main(["glue", "T1", "sst2"])
    evaluate.main(["glue", "T1", "sst2"])
    rows = {(r["variant"], r["metric"]): r for r in read_rows("reports/eval/T1-sst2.csv")}
    assert sorted({v for v, _ in rows}) == sorted(f"s{s}-{b}" for s in ("0.00", "0.90", "0.99")
                                                  for b in ("fp32", "q2", "q8"))
    assert {m for _, m in rows} == {"accuracy", "loss"}
    dense, dense_loss = rows["s0.00-fp32", "accuracy"], rows["s0.00-fp32", "loss"]
    assert dense["split"] == "dev" and int(dense["examples"]) == 30
    assert float(dense["value"]) >= 90
    assert float(dense["ci_low"]) <= float(dense["value"]) <= float(dense["ci_high"])
    assert abs(float(rows["s0.00-q8", "accuracy"]["value"]) - float(dense["value"])) <= 5  # 8 bits: ~lossless
    # pruning 90% of a 1-layer model's matrices erodes its margin (dev loss); 99% its accuracy too
    assert float(rows["s0.90-fp32", "loss"]["value"]) > float(dense_loss["value"])
    assert float(rows["s0.99-fp32", "accuracy"]["value"]) < float(dense["value"])
    assert float(dense["latency_ms"]) > 0 and float(dense["throughput"]) > 0  # the deployment format is timed
    assert rows["s0.90-q2", "accuracy"]["latency_ms"] == ""  # simulated variants run the same dense kernels: not timed
    assert all(r["value"] != "" and r["hardware"] for r in rows.values())
    # the input-ignoring baseline on the same 30 examples: the most frequent class, the labels' entropy
    labels = [line.rsplit("\t", 1)[1] for line in Path("data/bin/glue/sst2/dev.tsv").read_text().splitlines()[1:31]]
    frequencies = [labels.count(c) / len(labels) for c in set(labels)]
    assert float(dense["constant_score"]) == pytest.approx(100 * max(frequencies), abs=1e-3)
    assert float(dense_loss["constant_score"]) == pytest.approx(-sum(f * math.log(f) for f in frequencies), abs=1e-3)
    assert float(dense["ci_low"]) > float(dense["constant_score"])  # this model learned the task


def test_f1_and_mcc_score_the_positive_class_whatever_its_output_index():
    gold = np.array([0, 0, 1, 1, 1])  # outputs in label-dictionary order: here output 0 is label "1"
    predicted = np.array([0, 1, 1, 1, 1])
    assert metrics.f1(gold, predicted, positive=0) == pytest.approx(100 * 2 * 1 / (1 + 2))
    assert metrics.f1(gold, predicted) == pytest.approx(100 * 2 * 3 / (4 + 3))
    assert metrics.mcc(gold, np.ones_like(gold)) == 0.0  # a constant predictor has no correlation


def test_capped_dev_set_is_recorded(in_trained_project):
    def edit(p):
        configure(p)
        p["evaluate"]["max_dev_examples"] = 10
    set_params(in_trained_project, edit)
    compress.main(["glue", "T1", "sst2"])
    evaluate.main(["glue", "T1", "sst2"])
    assert {r["examples"] for r in read_rows("reports/eval/T1-sst2.csv")} == {"10"}


def test_translation_variants_get_bleu_with_its_signature(in_trained_project):
    set_params(in_trained_project, configure)
    compress.main(["mt", "T1"])
    evaluate.main(["mt", "T1"])
    rows = read_rows("reports/eval/mt-T1.csv")
    assert len(rows) == 9 and all(r["metric"] == "bleu" and r["value"] != "" for r in rows)
    # the best input-ignoring translation: one of the references, output for every source
    references = Path("data/bin/mt/test.raw.fr").read_text().splitlines()[:12]
    constant = max(BLEU().corpus_score([c] * 12, [references]).score for c in references)
    assert all(float(r["constant_score"]) == pytest.approx(constant, abs=1e-3) for r in rows)
    assert all("nrefs:1" in r["details"] and "tok:13a" in r["details"] for r in rows)
    assert {r["examples"] for r in rows} == {"12"}


def test_missing_compressed_model_says_which_stage_to_run(in_trained_project):
    set_params(in_trained_project, configure)
    with pytest.raises(StageError) as e:
        evaluate.main(["glue", "T2", "rte"])  # T2-rte was never fine-tuned nor compressed
    assert "models/compressed/T2-rte: no variants" in str(e.value)


def test_translation_model_scores_high_bleu_on_its_own_training_pairs(tiny_project, tmp_path):
    """Train on 40 pairs until memorized, test on the same pairs: BLEU must be high (a broken
    generation, detokenization or scoring path would give near 0)."""
    import gzip
    import shutil
    from conftest import sha256, tiny_training
    from stages import fetch, prepare_mt, train_mt
    mirror = tmp_path / "mirror" / "multi30k"
    for lang in ("en", "de", "fr"):
        lines = gzip.decompress((mirror / f"train.{lang}.gz").read_bytes()).decode().splitlines()[:40]
        (mirror / f"train.{lang}.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))
        shutil.copy(mirror / f"train.{lang}.gz", mirror / f"test_2016_flickr.{lang}.gz")

    def edit(p):
        tiny_training(p)
        configure(p)
        for name in ("train", "test_2016_flickr"):
            for lang in ("en", "de", "fr"):
                p["datasets"]["multi30k"]["files"][f"{name}.{lang}.gz"]["sha256"] = sha256(mirror / f"{name}.{lang}.gz")
        p["train_mt"]["recipe"].update(budget={"seconds": None, "updates": 400}, lr=0.005, validate_every=400, dropout=0.0,
                             label_smoothing=0.0)
        p["compress"].update(sparsities=[0.0], bits=[8])
        p["evaluate"]["max_test_sentences"] = None
    set_params(tiny_project, edit)
    fetch.main(["multi30k"])
    prepare_mt.main([])
    train_mt.main(["T2"])
    compress.main(["mt", "T2"])
    evaluate.main(["mt", "T2"])
    rows = {r["variant"]: r for r in read_rows("reports/eval/mt-T2.csv")}
    assert float(rows["s0.00-fp32"]["value"]) > 60, rows["s0.00-fp32"]
    assert float(rows["s0.00-fp32"]["ci_low"]) > float(rows["s0.00-fp32"]["constant_score"])
    assert int(rows["s0.00-fp32"]["examples"]) == 40


def test_pruned_onnx_models_have_their_own_throughput_and_their_format_s_dense_latency(in_trained_project):
    """ONNX Runtime runs a pruned model with the dense kernels: its batch-1 latency is its format's dense
    model's, said so in the row; throughput is every timed variant's own scoring pass."""
    set_params(in_trained_project, lambda p: configure(p, onnx_sparsities=[0.0, 0.9]))
    compress.main(["glue", "T1", "sst2"])
    evaluate.main(["glue", "T1", "sst2"])
    rows = {r["variant"]: r for r in read_rows("reports/eval/T1-sst2.csv") if r["metric"] == "accuracy"}
    for fmt in ("fp32", "int8", "int4"):
        dense, pruned = rows[f"onnx-s0.00-{fmt}"], rows[f"onnx-s0.90-{fmt}"]
        assert float(dense["latency_ms"]) > 0 and "latency timed" not in dense["details"]
        assert pruned["latency_ms"] == dense["latency_ms"]
        assert f"latency timed on onnx-s0.00-{fmt}" in pruned["details"]
        assert float(pruned["throughput"]) > 0 and float(dense["throughput"]) > 0
    assert float(rows["s0.00-fp32"]["throughput"]) > 0 and rows["s0.90-fp32"]["throughput"] == ""


def test_corrupted_onnx_file_gives_an_error_naming_it(in_trained_project):
    set_params(in_trained_project, lambda p: configure(p, onnx_sparsities=[0.0]))
    compress.main(["glue", "T1", "sst2"])
    broken = Path("models/compressed/T1-sst2/onnx-s0.00-int8/model_quantized.onnx")
    broken.write_bytes(broken.read_bytes()[:1000])
    with pytest.raises(StageError) as e:
        evaluate.main(["glue", "T1", "sst2"])
    assert "models/compressed/T1-sst2/onnx-s0.00-int8: cannot load the ONNX model (model_quantized.onnx)" in str(e.value)
