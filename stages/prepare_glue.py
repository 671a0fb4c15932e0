"""prepare_glue: one GLUE task, binarized as fairseq's RoBERTa GLUE recipe does.

Encodes with the pretraining sentencepiece model and dictionary (data/bin/mlm/), then writes
data/bin/glue/<task>/: input0/ (and input1/ for sentence pairs) and label/ as fairseq-preprocess
outputs, the normalized dev TSVs kept as raw text for evaluation, and meta.json. The first dev split
is fairseq's `valid`, the next `valid1` (MNLI: matched, then mismatched).

Usage: python -m stages.prepare_glue TASK
"""
import json
import shutil
import tempfile
from pathlib import Path

import sentencepiece as spm

from stages.lib import (atomic_dir, cap, dataset_arg, encode_pieces, fairseq_preprocess, load_params, log,
                        read_lines, run_stage, write_json)

MLM = Path("data/bin/mlm")


def main(argv):
    params = load_params()
    task, _ = dataset_arg(argv, params, "python -m stages.prepare_glue TASK", kind="glue")
    cfg = params.prepare_glue
    raw = Path("data/raw") / task
    meta = json.loads((raw / "meta.json").read_text())
    dev_splits = [s for s in meta["rows"] if s != "train"]
    rows = {"train": cap(read_tsv(raw / "train.tsv"), cfg.max_train_examples)}
    rows |= {s: cap(read_tsv(raw / f"{s}.tsv"), cfg.max_dev_examples) for s in dev_splits}
    inputs = ["sentence1", "sentence2"] if meta["pair"] else ["sentence1"]
    sp = spm.SentencePieceProcessor(model_file=str(MLM / "spm.model"))
    regression = meta["labels"] == "regression"

    with atomic_dir(Path("data/bin/glue") / task) as out, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i, column in enumerate(inputs):
            for split, split_rows in rows.items():
                encode_pieces(sp, [r[column] for r in split_rows], tmp / f"{split}.input{i}")
            fairseq_preprocess(out / f"input{i}", ["--only-source", "--srcdict", MLM / "dict.txt",
                                                   *split_prefixes(tmp, dev_splits, f"input{i}")])
        for split, split_rows in rows.items():
            labels = [r["label"] for r in split_rows]
            if regression:  # the recipe scales STS-B scores to [0, 1]
                labels = [str(float(x) / 5.0) for x in labels]
            (tmp / f"{split}.label").write_text("".join(x + "\n" for x in labels))
        if regression:  # sentence_prediction reads regression targets as text
            (out / "label").mkdir()
            for name, split in fairseq_split_names(dev_splits):
                shutil.copy(tmp / f"{split}.label", out / "label" / f"{name}.label")
        else:
            fairseq_preprocess(out / "label", ["--only-source", *split_prefixes(tmp, dev_splits, "label")])
        for split in dev_splits:  # raw text for evaluating exported models on strings
            write_tsv(out / f"{split}.tsv", rows[split], inputs + ["label"])
        write_json(out / "meta.json", {
            "task": task, "pair": meta["pair"], "labels": meta["labels"], "regression": regression,
            "num_classes": 1 if regression else len(meta["labels"]),
            "fairseq_splits": dict(fairseq_split_names(dev_splits)),
            "examples": {s: len(r) for s, r in rows.items()},
            "available": meta["rows"],
            "caps": {"max_train_examples": cfg.max_train_examples, "max_dev_examples": cfg.max_dev_examples}})
    log(f"{task}: wrote data/bin/glue/{task} ({ {s: len(r) for s, r in rows.items()} })")


def fairseq_split_names(dev_splits):
    """[(fairseq split name, our split name)]: train, then valid, valid1, ... for the dev splits."""
    names = [("train", "train")]
    return names + [("valid" if i == 0 else f"valid{i}", s) for i, s in enumerate(dev_splits)]


def split_prefixes(tmp, dev_splits, suffix):
    return ["--trainpref", tmp / f"train.{suffix}",
            "--validpref", ",".join(str(tmp / f"{s}.{suffix}") for s in dev_splits)]


def read_tsv(path):
    """Read a TSV normalized by fetch (no quoting: fields never hold tabs or newlines)."""
    header, *lines = read_lines(path)
    fields = header.split("\t")
    return [dict(zip(fields, line.split("\t"))) for line in lines]


def write_tsv(path, rows, fields):
    with open(path, "w") as f:
        f.write("\t".join(fields) + "\n")
        f.writelines("\t".join(row[k] for k in fields) + "\n" for row in rows)


if __name__ == "__main__":
    run_stage(main)
