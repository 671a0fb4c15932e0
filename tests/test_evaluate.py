"""Evaluation sanity on tiny trained models: a separable task scores near 100% and its 90%-pruned copy
lower; the CSV has a row with a value for every variant; every variant's predictions are kept, one row per
example; translation gets BLEU and chrF; broken ONNX files are named."""
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from sacrebleu.metrics import BLEU, CHRF

from conftest import set_params
from lib import metrics
from lib.predictions import glue_predictions, read_predictions, write_predictions
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
    p["datasets"]["sst2"]["label_names"] = ["negative", "positive"]  # as the real catalog names SST-2's labels


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
    assert {r["device"] for r in rows.values()} == {"cpu"}  # evaluate.device auto, and no GPU here
    # the input-ignoring baseline on the same 30 examples: the most frequent class, the labels' entropy
    labels = [line.rsplit("\t", 1)[1] for line in Path("data/bin/glue/sst2/dev.tsv").read_text().splitlines()[1:31]]
    frequencies = [labels.count(c) / len(labels) for c in set(labels)]
    assert float(dense["constant_score"]) == pytest.approx(100 * max(frequencies), abs=1e-3)
    assert float(dense_loss["constant_score"]) == pytest.approx(-sum(f * math.log(f) for f in frequencies), abs=1e-3)
    assert float(dense["ci_low"]) > float(dense["constant_score"])  # this model learned the task
    # every variant's prediction for each of the 30 examples is kept, in the catalog's label names
    kept = Path("reports/predictions/T1-sst2")
    assert sorted(f.stem for f in kept.glob("*.tsv")) == sorted({v for v, _ in rows})
    sentences = [line.rsplit("\t", 1)[0] for line in Path("data/bin/glue/sst2/dev.tsv").read_text().splitlines()[1:31]]
    names = {"0": "negative", "1": "positive"}
    for path in kept.glob("*.tsv"):
        predicted = read_predictions(path)
        assert [(r["split"], int(r["index"]), r["sentence1"]) for r in predicted] == \
            [("dev", i, s) for i, s in enumerate(sentences)], path
        assert [r["gold"] for r in predicted] == [names[label] for label in labels]
        assert {r["predicted"] for r in predicted} <= {"negative", "positive"}
        assert all(0.5 <= float(r["probability"]) <= 1 for r in predicted)  # the larger of two probabilities
        accuracy = 100 * np.mean([r["gold"] == r["predicted"] for r in predicted])
        assert accuracy == pytest.approx(float(rows[path.stem, "accuracy"]["value"]), abs=1e-3), path


def test_variants_are_scored_on_the_gpu_where_there_is_one_and_on_every_core_otherwise():
    import os
    from lib.devices import evaluation_device
    from lib.inference import scoring_threads
    assert evaluation_device("auto", cuda_available=True) == "cuda"
    assert evaluation_device("auto", cuda_available=False) == "cpu"
    assert evaluation_device("cpu", cuda_available=True) == "cpu"
    with pytest.raises(StageError, match="evaluate.device is 'cuda' but torch sees no GPU"):
        evaluation_device("cuda", cuda_available=False)
    assert scoring_threads("auto") == len(os.sched_getaffinity(0)) and scoring_threads(3) == 3


def test_scoring_runs_on_the_scoring_threads_and_timing_on_the_timing_threads(in_trained_project, monkeypatch):
    """The deployment formats are scored with evaluate.scoring_threads and timed, on a sample of
    throughput_examples, with evaluate.threads: torch's threads for the fairseq model, a session of that
    many threads for an ONNX model."""
    import torch
    from lib import inference
    set_params(in_trained_project, lambda p: (configure(p, [0.0]), p["evaluate"].update(scoring_threads=2,
                                                                                 throughput_examples=16)))
    compress.main(["glue", "T1", "sst2"])
    seen = {"scoring": set(), "timing": [], "sessions": []}
    by_length, throughput, load_onnx = inference.by_length, inference.throughput, inference.load_onnx

    def scoring(run, items, *args):
        seen["scoring"].add(torch.get_num_threads())
        return by_length(run, items, *args)

    def timing(run, items, *args):
        seen["timing"].append((torch.get_num_threads(), len(items)))
        return throughput(run, items, *args)

    def session(model_class, variant, threads):
        seen["sessions"].append((Path(variant).name, threads))
        return load_onnx(model_class, variant, threads)
    monkeypatch.setattr(evaluate, "by_length", scoring)
    monkeypatch.setattr(inference, "throughput", timing)
    monkeypatch.setattr(evaluate, "load_onnx", session)
    monkeypatch.setattr(inference, "load_onnx", session)  # the timing session (inference.onnx_timing_model)
    evaluate.main(["glue", "T1", "sst2"])
    assert seen["scoring"] == {2}  # every fairseq variant scored on the scoring threads (no GPU here)
    # the dense fairseq model timed on torch's evaluate.threads, the three ONNX models on their sessions' threads,
    # each on the sample
    assert sorted(seen["timing"]) == [(1, 16)] + [(2, 16)] * 3
    for fmt in ("fp32", "int8", "int4"):  # each ONNX model scored on a 2-thread session, timed on a 1-thread one
        assert [t for v, t in seen["sessions"] if v == f"onnx-s0.00-{fmt}"] == [2, 1]
    assert torch.get_num_threads() == 2  # restored after each timing


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
    assert len(rows) == 18 and all(r["value"] != "" for r in rows)
    assert [r["metric"] for r in rows] == ["bleu", "chrf"] * 9  # BLEU first: the headline
    bleu, chrf = [r for r in rows if r["metric"] == "bleu"], [r for r in rows if r["metric"] == "chrf"]
    # the best input-ignoring translation: one of the references, output for every source
    references = Path("data/bin/mt/test.raw.fr").read_text().splitlines()[:12]
    sources = Path("data/bin/mt/test.raw.en").read_text().splitlines()[:12]
    for scored, metric in ((bleu, BLEU()), (chrf, CHRF())):
        constant = max(metric.corpus_score([c] * 12, [references]).score for c in references)
        assert all(float(r["constant_score"]) == pytest.approx(constant, abs=1e-3) for r in scored)
        assert all(float(r["ci_low"]) <= float(r["value"]) <= float(r["ci_high"]) for r in scored)
    assert all("nrefs:1" in r["details"] and "tok:13a" in r["details"] for r in bleu)
    assert all("nrefs:1" in r["details"] and "nc:6" in r["details"] for r in chrf)  # chrF's signature
    assert {r["examples"] for r in rows} == {"12"}
    # each variant's translations are kept: the very hypotheses its scores were computed on
    for r in bleu:
        kept = read_predictions(Path("reports/predictions/mt-T1") / f"{r['variant']}.tsv")
        assert [(int(k["index"]), k["source"], k["reference"]) for k in kept] == \
            list(zip(range(12), sources, references))
        hypotheses = [k["hypothesis"] for k in kept]
        assert BLEU().corpus_score(hypotheses, [references]).score == pytest.approx(float(r["value"]), abs=1e-3)
        chrf_row = next(c for c in chrf if c["variant"] == r["variant"])
        assert CHRF().corpus_score(hypotheses, [references]).score == pytest.approx(float(chrf_row["value"]), abs=1e-3)


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
    rows = {r["variant"]: r for r in read_rows("reports/eval/mt-T2.csv") if r["metric"] == "bleu"}
    assert float(rows["s0.00-fp32"]["value"]) > 60, rows["s0.00-fp32"]
    assert float(rows["s0.00-fp32"]["ci_low"]) > float(rows["s0.00-fp32"]["constant_score"])
    assert int(rows["s0.00-fp32"]["examples"]) == 40


def test_pruned_onnx_models_have_their_format_s_dense_speed(in_trained_project):
    """ONNX Runtime runs a pruned model with the dense kernels: its latency and throughput are its format's
    dense model's, said so in the row."""
    set_params(in_trained_project, lambda p: configure(p, onnx_sparsities=[0.0, 0.9]))
    compress.main(["glue", "T1", "sst2"])
    evaluate.main(["glue", "T1", "sst2"])
    rows = {r["variant"]: r for r in read_rows("reports/eval/T1-sst2.csv") if r["metric"] == "accuracy"}
    for fmt in ("fp32", "int8", "int4"):
        dense, pruned = rows[f"onnx-s0.00-{fmt}"], rows[f"onnx-s0.90-{fmt}"]
        assert float(dense["latency_ms"]) > 0 and "speed timed" not in dense["details"]
        assert (pruned["latency_ms"], pruned["throughput"]) == (dense["latency_ms"], dense["throughput"])
        assert f"speed timed on onnx-s0.00-{fmt}" in pruned["details"]
        assert float(dense["throughput"]) > 0
    assert float(rows["s0.00-fp32"]["throughput"]) > 0 and rows["s0.90-fp32"]["throughput"] == ""
    # the exported classifiers name their outputs by the catalog's label_names; their predictions are kept too
    config = json.loads(Path("models/compressed/T1-sst2/onnx-s0.00-fp32/config.json").read_text())
    assert set(config["id2label"].values()) == {"negative", "positive"}
    assert {v: int(k) for k, v in config["id2label"].items()} == config["label2id"]
    fairseq_predicted = [r["predicted"] for r in read_predictions(Path("reports/predictions/T1-sst2/s0.00-fp32.tsv"))]
    for variant in rows:
        predicted = read_predictions(Path(f"reports/predictions/T1-sst2/{variant}.tsv"))
        assert len(predicted) == int(rows[variant]["examples"]) and {r["predicted"] for r in predicted} <= \
            {"negative", "positive"}
    onnx_predicted = [r["predicted"] for r in read_predictions(Path("reports/predictions/T1-sst2/onnx-s0.00-fp32.tsv"))]
    # the same model in two runtimes
    assert sum(a == b for a, b in zip(fairseq_predicted, onnx_predicted)) >= len(onnx_predicted) - 2


def test_onnx_classes_named_otherwise_than_the_catalog_are_refused(in_trained_project):
    def edit(p):
        configure(p, onnx_sparsities=[0.0])
        p["compress"].update(sparsities=[0.0], bits=[8])
    set_params(in_trained_project, edit)
    compress.main(["glue", "T1", "sst2"])
    set_params(in_trained_project, lambda p: p["datasets"]["sst2"].update(label_names=["bad", "good"]))
    try:
        with pytest.raises(StageError, match="export it again"):
            evaluate.main(["glue", "T1", "sst2"])
    finally:  # the trained project is shared by the session's tests
        set_params(in_trained_project, lambda p: p["datasets"]["sst2"].pop("label_names"))


def test_predictions_files_quote_tabs_and_quotes_and_scale_regression_back(tmp_path):
    rows = [{"sentence1": 'a "quoted"\ttab', "label": "4.5"}, {"sentence1": "plain", "label": "0"}]
    meta = {"regression": True, "label_range": [0, 5]}
    predicted = glue_predictions("dev", rows, np.array([[0.9], [0.1]]), [], {}, meta)
    write_predictions(tmp_path / "v.tsv", predicted)
    back = read_predictions(tmp_path / "v.tsv")
    assert [r["sentence1"] for r in back] == ['a "quoted"\ttab', "plain"]
    assert [float(r["predicted"]) for r in back] == [4.5, 0.5] and [r["gold"] for r in back] == ["4.5", "0"]
    assert [r["probability"] for r in back] == ["", ""]
    classified = glue_predictions("dev", rows[:1], np.array([[0.0, np.log(3)]]), ["1", "0"], {"0": "no"},
                                  {"regression": False})
    assert classified[0]["predicted"] == "no" and classified[0]["probability"] == "0.7500"


def test_corrupted_onnx_file_gives_an_error_naming_it(in_trained_project):
    set_params(in_trained_project, lambda p: configure(p, onnx_sparsities=[0.0]))
    compress.main(["glue", "T1", "sst2"])
    broken = Path("models/compressed/T1-sst2/onnx-s0.00-int8/model_quantized.onnx")
    broken.write_bytes(broken.read_bytes()[:1000])
    with pytest.raises(StageError) as e:
        evaluate.main(["glue", "T1", "sst2"])
    assert "models/compressed/T1-sst2/onnx-s0.00-int8: cannot load the ONNX model (model_quantized.onnx)" in str(e.value)
