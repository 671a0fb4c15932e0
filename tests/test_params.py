"""params.yaml validation: every fault fails up front, naming the key's full path and what is accepted."""
import subprocess
import sys

import pytest

from conftest import REPO, read_params, write_params
from lib.errors import StageError
from lib.params import load_params


def invalid(tmp_path, edit) -> str:
    params = read_params(REPO)
    edit(params)
    write_params(tmp_path, params)
    with pytest.raises(StageError) as e:
        load_params(tmp_path / "params.yaml")
    return str(e.value)


def test_default_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.data.corpus == "wikitext2"
    assert params.data.glue_tasks == ["sst2"]
    assert (params.data.translation.source, params.data.translation.target) == ("en", "fr")


def test_unknown_key_names_path_and_accepted_keys(tmp_path):
    msg = invalid(tmp_path, lambda p: p["prepare_mlm"].update(vocab_sise=8000))
    assert "prepare_mlm.vocab_sise: unknown key" in msg
    assert "['max_train_lines', 'model_type', 'sentencepiece_sample', 'vocab_size']" in msg


def test_unknown_key_inside_a_dataset(tmp_path):
    msg = invalid(tmp_path, lambda p: p["datasets"]["sst2"].update(lables=["0", "1"]))
    assert "datasets.sst2.lables: unknown key" in msg and "'labels'" in msg


def test_missing_key(tmp_path):
    msg = invalid(tmp_path, lambda p: p["prepare_mt"].pop("model_type"))
    assert "prepare_mt.model_type: missing key" in msg


def test_wrong_type(tmp_path):
    msg = invalid(tmp_path, lambda p: p["prepare_mlm"].update(vocab_size="big"))
    assert "prepare_mlm.vocab_size" in msg and "integer" in msg


def test_out_of_range(tmp_path):
    msg = invalid(tmp_path, lambda p: p["prepare_mlm"].update(vocab_size=10))
    assert "prepare_mlm.vocab_size: Input should be greater than or equal to 100" in msg


def test_enumerated_values_are_listed(tmp_path):
    msg = invalid(tmp_path, lambda p: p["prepare_mt"].update(model_type="wordpiece"))
    assert "prepare_mt.model_type: Input should be 'unigram' or 'bpe'" in msg


def test_cap_must_be_positive(tmp_path):
    msg = invalid(tmp_path, lambda p: p["prepare_glue"].update(max_train_examples=0))
    assert "prepare_glue.max_train_examples" in msg


def test_unknown_glue_task(tmp_path):
    msg = invalid(tmp_path, lambda p: p["data"].update(glue_tasks=["sst2", "mnlii"]))
    assert "data.glue_tasks.1: 'mnlii' is not a dataset" in msg and "'mnli'" in msg


def test_glue_task_of_wrong_kind(tmp_path):
    msg = invalid(tmp_path, lambda p: p["data"].update(glue_tasks=["multi30k"]))
    assert "data.glue_tasks.0: 'multi30k' is a parallel dataset, expected glue" in msg


def test_translation_language_must_exist(tmp_path):
    msg = invalid(tmp_path, lambda p: p["data"]["translation"].update(target="cs"))
    assert "data.translation.target: 'cs' is not one of ['en', 'de', 'fr']" in msg


def test_bad_checksum_format(tmp_path):
    msg = invalid(tmp_path, lambda p: p["datasets"]["sst2"]["files"]["train.tsv"].update(sha256="abc"))
    assert "datasets.sst2.files.train.tsv.sha256" in msg


def test_split_must_name_a_listed_file(tmp_path):
    msg = invalid(tmp_path, lambda p: p["datasets"]["rte"]["splits"]["dev"][0].update(file="dev2.tsv"))
    assert "datasets.rte" in msg and "file 'dev2.tsv' is not in files" in msg


def test_stage_fails_before_any_work(tmp_path):
    """A stage run with bad params exits 2 with the message and writes nothing."""
    params = read_params(REPO)
    params["prepare_glue"]["max_dev_examples"] = -5
    write_params(tmp_path, params)
    run = subprocess.run([sys.executable, "-m", "stages.fetch", "sst2"], cwd=tmp_path, capture_output=True,
                         text=True, env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert run.returncode == 2, run.stderr
    assert "error: params.yaml: invalid parameters" in run.stderr
    assert "prepare_glue.max_dev_examples" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "data").exists()


def test_per_language_members_must_cover_the_languages(tmp_path):
    msg = invalid(tmp_path, lambda p: p["datasets"]["wmt14_en_fr"]["splits"]["test"][0]["member"].pop("fr"))
    assert "datasets.wmt14_en_fr: splits.test: member maps languages ['en'], expected ['en', 'fr']" in msg


def test_caps_have_no_silent_default(tmp_path):
    msg = invalid(tmp_path, lambda p: p["prepare_glue"].pop("max_dev_examples"))
    assert "prepare_glue.max_dev_examples: missing key" in msg


def test_recovery_takes_seconds_or_updates_not_both(tmp_path):
    msg = invalid(tmp_path, lambda p: p["compress"].update(recovery={"seconds": 60, "updates": 100}))
    assert "compress.recovery: set at most one of seconds or updates" in msg


@pytest.mark.parametrize("task, edit, message", [
    ("sst2", lambda d: d.pop("metrics"), "kind 'glue' needs ['metrics']"),
    ("sst2", lambda d: d.update(metrics=["pearson"]),
     "metrics ['pearson'] do not score a classification task; choose from ['accuracy', 'f1', 'mcc']"),
    ("mnli", lambda d: d.update(metrics=["accuracy", "f1"]), "metrics f1 and mcc score two classes; labels has 3"),
    ("sst2", lambda d: d.update(label_range=[0, 1]), "label_range is for regression tasks"),
    ("stsb", lambda d: d.update(metrics=["accuracy"]),
     "metrics ['accuracy'] do not score a regression task; choose from ['pearson', 'spearman']"),
    ("stsb", lambda d: d.pop("label_range"), "a regression task needs label_range"),
    ("stsb", lambda d: d.update(label_range=[5, 0]), "label_range [5.0, 0.0]: needs two finite numbers, lowest first"),
    ("sst2", lambda d: d.update(label_names=["negative"]), "label_names ['negative']: one distinct name for each"),
    ("sst2", lambda d: d.update(label_names=["same", "same"]), "label_names ['same', 'same']: one distinct name"),
    ("stsb", lambda d: d.update(label_names=["low", "high"]), "label_names are for classification tasks"),
])
def test_a_glue_task_declares_metrics_and_labels_that_fit_together(tmp_path, task, edit, message):
    msg = invalid(tmp_path, lambda p: edit(p["datasets"][task]))
    assert f"datasets.{task}: {message}" in msg


def test_control_sizes_must_be_pretrained_sizes(tmp_path):
    msg = invalid(tmp_path, lambda p: p["finetune"].update(random_init_sizes=["L9-H999"]))
    assert "finetune.random_init_sizes.0: 'L9-H999' is not one of pretrain.sizes" in msg


def test_end_lr_above_the_peak_is_refused(tmp_path):
    msg = invalid(tmp_path, lambda p: p["pretrain"]["recipe"].update(lr=0.001, end_lr=0.01))
    assert "end_lr 0.01 is above lr 0.001" in msg


def test_sparsities_that_name_the_same_variant_are_refused(tmp_path):
    msg = invalid(tmp_path, lambda p: p["compress"].update(sparsities=[0.0, 0.5, 0.501]))
    assert "compress" in msg and "give variants the same name" in msg and "['0.50']" in msg
