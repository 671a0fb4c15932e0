"""The prepare stages on a tiny mirror: binarized data decodes back to the text it came from."""
import json
from pathlib import Path

import pytest
import sentencepiece as spm
from fairseq.data import Dictionary, data_utils

from conftest import set_params
from stages import fetch, prepare_glue, prepare_mlm, prepare_mt
from lib.errors import DataError


def load(prefix: Path, dictionary: Dictionary):
    dataset = data_utils.load_indexed_dataset(str(prefix), dictionary)
    assert dataset is not None, f"no binarized data at {prefix}"
    return dataset


def decode(dataset, i, dictionary, sp) -> str:
    pieces = dictionary.string(dataset[i]).split()
    return sp.decode(pieces)


@pytest.fixture
def fetched(tiny_project):
    for name in ("wikitext2", "sst2", "rte", "multi30k"):
        fetch.main([name])
    return tiny_project


def test_prepare_mlm_round_trips(fetched):
    prepare_mlm.main([])
    out = Path("data/bin/mlm")
    caps = json.loads((out / "caps.json").read_text())
    dictionary = Dictionary.load(str(out / "dict.txt"))
    sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    train_text = [x.strip() for x in Path("data/raw/wikitext2/train.txt").read_text().splitlines() if x.strip()]
    for split in ("train", "valid", "test"):
        assert len(load(out / split, dictionary)) == caps["lines"][split]
    train = load(out / "train", dictionary)
    assert len(train) == len(train_text)
    for i in (0, 7, len(train) - 1):
        assert decode(train, i, dictionary, sp) == train_text[i]
    assert not (out / "preprocess.log").exists()  # it names temp paths: outputs must be reproducible
    assert caps["max_train_lines"] is None and caps["train_lines_available"] == len(train_text)


def test_prepare_mlm_cap_is_applied_and_recorded(fetched):
    set_params(fetched, lambda p: p["prepare_mlm"].update(max_train_lines=50))
    prepare_mlm.main([])
    caps = json.loads(Path("data/bin/mlm/caps.json").read_text())
    assert caps["max_train_lines"] == 50 and caps["lines"]["train"] == 50
    assert caps["train_lines_available"] > 50
    assert len(load(Path("data/bin/mlm/train"), Dictionary.load("data/bin/mlm/dict.txt"))) == 50


def test_prepare_glue_follows_the_roberta_recipe(fetched):
    prepare_mlm.main([])
    set_params(fetched, lambda p: p["prepare_glue"].update(max_train_examples=50))
    for task in ("sst2", "rte"):
        prepare_glue.main([task])
    mlm_dict = Path("data/bin/mlm/dict.txt").read_text()
    sp = spm.SentencePieceProcessor(model_file="data/bin/mlm/spm.model")
    for task, inputs in (("sst2", 1), ("rte", 2)):
        out = Path("data/bin/glue") / task
        meta = json.loads((out / "meta.json").read_text())
        assert meta["examples"] == {"train": 50, "dev": meta["available"]["dev"]}
        assert meta["caps"]["max_train_examples"] == 50
        assert meta["fairseq_splits"] == {"train": "train", "valid": "dev"}
        assert (out / "input1").exists() == (inputs == 2)
        dev_rows = (out / "dev.tsv").read_text().splitlines()[1:]
        for i in range(inputs):  # same dictionary as pretraining; text decodes back
            assert (out / f"input{i}" / "dict.txt").read_text() == mlm_dict
            dictionary = Dictionary.load(str(out / f"input{i}" / "dict.txt"))
            valid = load(out / f"input{i}" / "valid", dictionary)
            assert len(valid) == len(dev_rows)
            assert decode(valid, 3, dictionary, sp) == dev_rows[3].split("\t")[i]
        label_dict = Dictionary.load(str(out / "label" / "dict.txt"))
        labels = load(out / "label" / "valid", label_dict)
        assert [label_dict.string(labels[i]) for i in range(len(labels))] == [r.split("\t")[-1] for r in dev_rows]


@pytest.mark.parametrize("bad_row, message", [
    ("great movie\t2", "label '2' is not one of the task's labels ['0', '1']"),  # not a third class
    ("great\tmovie\t1", "malformed row: expected 2 tab-separated fields, found 3"),  # 'movie' not a label
    ("\t", "row of empty fields"),
])
def test_prepare_glue_checks_hand_edited_raw_rows_as_fetch_does(fetched, bad_row, message):
    path = Path("data/raw/sst2/train.tsv")
    lines = path.read_text().splitlines()
    lines[7] = bad_row
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        prepare_glue.main(["sst2"])
    assert str(e.value).startswith(f"{path}:8: ") and message in str(e.value)
    assert not Path("data/bin/glue/sst2").exists()


def test_prepare_glue_records_the_unk_rate_and_warns_on_text_unlike_the_corpus(fetched, capsys):
    prepare_mlm.main([])
    dev = Path("data/raw/sst2/dev.tsv")  # Portuguese: the tiny English corpus has no ç, ã, é
    dev.write_text("sentence1\tlabel\n" + "não é uma ação fácil\t1\né a canção do coração\t0\n" * 5)
    prepare_glue.main(["sst2"])
    unk = json.loads(Path("data/bin/glue/sst2/meta.json").read_text())["unk_rate"]
    assert unk["train"] == 0 and unk["dev"] > 0.005
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "sst2 dev:" in warnings[0] and "<unk>" in warnings[0]


def test_prepare_mt_joined_dictionary_and_raw_references(fetched):
    prepare_mt.main([])
    out = Path("data/bin/mt")
    assert (out / "dict.en.txt").read_text() == (out / "dict.fr.txt").read_text()
    dictionary = Dictionary.load(str(out / "dict.en.txt"))
    sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    reference = Path("data/raw/multi30k/test.fr").read_text()
    assert (out / "test.raw.fr").read_text() == reference
    test_fr = load(out / "test.en-fr.fr", dictionary)
    assert decode(test_fr, 0, dictionary, sp) == reference.splitlines()[0]
    caps = json.loads((out / "caps.json").read_text())
    assert caps["pairs"] == {"train": 300, "valid": 30, "test": 30}


def test_prepare_mt_other_direction(fetched):
    set_params(fetched, lambda p: p["data"]["translation"].update(source="de", target="en"))
    prepare_mt.main([])
    assert Path("data/bin/mt/train.de-en.de.bin").exists()
    assert Path("data/bin/mt/test.raw.en").read_text() == Path("data/raw/multi30k/test.en").read_text()
