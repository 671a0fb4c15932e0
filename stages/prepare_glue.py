"""prepare_glue: one GLUE task, binarized as fairseq's RoBERTa GLUE recipe does.

Encodes with the pretraining sentencepiece model and dictionary (data/bin/mlm/), then writes
data/bin/glue/<task>/: input0/ (and input1/ for sentence pairs) binarized as fairseq-preprocess would
(lib/binarize.py), label/ by fairseq-preprocess (its dictionary of the train labels), the normalized dev TSVs kept as raw text for evaluation, and meta.json (with each split's
rate of <unk> pieces, and a warning above UNK_WARNING). The first dev split is fairseq's `valid`, the
next `valid1` (MNLI: matched, then mismatched).

data/raw/<task>/ is read with fetch's row checks again (lib/glue.py): it may have been edited by hand.
Streamed: each split's TSV is read a few times (the row checks and counts, the inputs with their labels,
the dev text) and never held in memory.

Usage: python -m stages.prepare_glue TASK
"""
import json
import shutil
from pathlib import Path

import sentencepiece as spm

from lib.binarize import binarize_columns
from lib.errors import log
from lib.fairseq_cli import fairseq_preprocess
from lib.files import atomic_dir, scratch_dir, write_json
from lib.glue import iter_tsv, normalized_fields, regression_target
from lib.params import dataset_arg, load_params
from lib.stage import run_stage
from lib.text import capped, kept_indices

MLM = Path("data/bin/mlm")
# a larger share of pieces the tokenizer cannot represent means text unlike the pretraining corpus
# (another language, another script); the model sees those words as <unk>
UNK_WARNING = 0.005


def main(argv):
    params = load_params()
    task, _ = dataset_arg(argv, params, "python -m stages.prepare_glue TASK", kind="glue")
    cfg = params.prepare_glue
    raw = Path("data/raw") / task
    meta = json.loads((raw / "meta.json").read_text())
    dev_splits = [s for s in meta["rows"] if s != "train"]
    splits = ["train", *dev_splits]
    # every row checked, and counted for the caps, before any work
    available = {s: sum(1 for _ in iter_tsv(raw / f"{s}.tsv", meta)) for s in splits}
    keep = {s: kept_indices(available[s], cfg.max_train_examples if s == "train" else cfg.max_dev_examples)
            for s in splits}

    def rows(split):
        return capped(iter_tsv(raw / f"{split}.tsv", meta), keep[split])

    inputs = normalized_fields(meta["pair"])[:-1]
    sp = spm.SentencePieceProcessor(model_file=str(MLM / "spm.model"))
    regression = meta["labels"] == "regression"
    out_final = Path("data/bin/glue") / task
    log(f"encoding {task}: {available} rows checked")
    with atomic_dir(out_final) as out, scratch_dir(out_final) as tmp:
        from fairseq.data import Dictionary  # here: importing fairseq logs, and run_stage has set up logging
        dictionary = Dictionary.load(str(MLM / "dict.txt"))
        for i in range(len(inputs)):
            (out / f"input{i}").mkdir()
            shutil.copy(MLM / "dict.txt", out / f"input{i}" / "dict.txt")
        fairseq_name = {split: name for name, split in fairseq_split_names(dev_splits)}
        unk_rates, examples = {}, {}
        for split in splits:
            with open(tmp / f"{split}.label", "w") as labels:
                def texts(split=split, labels=labels):  # each row's label goes to fairseq-preprocess's file
                    for r in rows(split):
                        labels.write((str(regression_target(r["label"], meta["label_range"])) if regression
                                      else r["label"]) + "\n")
                        yield tuple(r[c] for c in inputs)
                counts = binarize_columns(sp, dictionary, texts(),
                                          [out / f"input{i}" / fairseq_name[split] for i in range(len(inputs))])
            examples[split] = int(counts[0][dictionary.eos()])  # one </s> a sentence
            pieces = sum(int(c.sum()) for c in counts) - examples[split] * len(inputs)
            unk_rates[split] = sum(int(c[dictionary.unk()]) for c in counts) / max(pieces, 1)
        for split, rate in unk_rates.items():
            if rate > UNK_WARNING:
                log(f"warning: {task} {split}: {rate:.1%} of the sentencepiece pieces are <unk> (above "
                    f"{UNK_WARNING:.1%}): the text has characters the tokenizer ({MLM / 'spm.model'}, trained on "
                    "the pretraining corpus) never saw, and the model cannot read them. Pretrain on a corpus "
                    "closer to this task's language and script.")
        log(f"binarizing {task} labels")
        if regression:  # sentence_prediction reads regression targets as text
            (out / "label").mkdir()
            for name, split in fairseq_split_names(dev_splits):
                shutil.copy(tmp / f"{split}.label", out / "label" / f"{name}.label")
        else:
            fairseq_preprocess(out / "label", ["--only-source", *split_prefixes(tmp, dev_splits, "label")])
        for split in dev_splits:  # raw text for evaluating exported models on strings
            write_tsv(out / f"{split}.tsv", rows(split), inputs + ["label"])
        write_json(out / "meta.json", {
            "task": task, "pair": meta["pair"], "labels": meta["labels"], "label_range": meta["label_range"],
            "regression": regression, "unk_rate": {s: round(r, 6) for s, r in unk_rates.items()},
            "num_classes": 1 if regression else len(meta["labels"]),
            "fairseq_splits": dict(fairseq_split_names(dev_splits)),
            "examples": examples,
            "available": meta["rows"],
            "caps": {"max_train_examples": cfg.max_train_examples, "max_dev_examples": cfg.max_dev_examples}})
    log(f"{task}: wrote data/bin/glue/{task} ({examples})")


def fairseq_split_names(dev_splits):
    """[(fairseq split name, our split name)]: train, then valid, valid1, ... for the dev splits."""
    names = [("train", "train")]
    return names + [("valid" if i == 0 else f"valid{i}", s) for i, s in enumerate(dev_splits)]


def split_prefixes(tmp, dev_splits, suffix):
    return ["--trainpref", tmp / f"train.{suffix}",
            "--validpref", ",".join(str(tmp / f"{s}.{suffix}") for s in dev_splits)]


def write_tsv(path, rows, fields):
    with open(path, "w") as f:
        f.write("\t".join(fields) + "\n")
        f.writelines("\t".join(row[k] for k in fields) + "\n" for row in rows)


if __name__ == "__main__":
    run_stage(main)
