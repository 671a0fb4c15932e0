"""prepare_glue: one GLUE task, binarized as fairseq's RoBERTa GLUE recipe does.

Encodes with the pretraining sentencepiece model and dictionary (data/bin/mlm/), then writes
data/bin/glue/<task>/: input0/ (and input1/ for sentence pairs) and label/ as fairseq-preprocess
outputs, the normalized dev TSVs kept as raw text for evaluation, and meta.json (with each split's
rate of <unk> pieces, and a warning above UNK_WARNING). The first dev split is fairseq's `valid`, the
next `valid1` (MNLI: matched, then mismatched).

data/raw/<task>/ is read with fetch's row checks again (lib/glue.py): it may have been edited by hand.

Usage: python -m stages.prepare_glue TASK
"""
import json
import shutil
import tempfile
from pathlib import Path

import sentencepiece as spm

from lib.errors import log
from lib.fairseq_cli import fairseq_preprocess
from lib.files import atomic_dir, write_json
from lib.glue import normalized_fields, read_tsv, regression_target
from lib.params import dataset_arg, load_params
from lib.stage import run_stage
from lib.text import cap, encode_pieces

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
    rows = {"train": cap(read_tsv(raw / "train.tsv", meta), cfg.max_train_examples)}
    rows |= {s: cap(read_tsv(raw / f"{s}.tsv", meta), cfg.max_dev_examples) for s in dev_splits}
    inputs = normalized_fields(meta["pair"])[:-1]
    sp = spm.SentencePieceProcessor(model_file=str(MLM / "spm.model"))
    regression = meta["labels"] == "regression"
    unk_rates = {split: unk_rate(sp, [r[c] for r in split_rows for c in inputs]) for split, split_rows in rows.items()}
    for split, rate in unk_rates.items():
        if rate > UNK_WARNING:
            log(f"warning: {task} {split}: {rate:.1%} of the sentencepiece pieces are <unk> (above "
                f"{UNK_WARNING:.1%}): the text has characters the tokenizer ({MLM / 'spm.model'}, trained on the "
                "pretraining corpus) never saw, and the model cannot read them. Pretrain on a corpus closer "
                "to this task's language and script.")

    with atomic_dir(Path("data/bin/glue") / task) as out, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i, column in enumerate(inputs):
            for split, split_rows in rows.items():
                encode_pieces(sp, [r[column] for r in split_rows], tmp / f"{split}.input{i}")
            fairseq_preprocess(out / f"input{i}", ["--only-source", "--srcdict", MLM / "dict.txt",
                                                   *split_prefixes(tmp, dev_splits, f"input{i}")])
        for split, split_rows in rows.items():
            labels = [r["label"] for r in split_rows]
            if regression:
                labels = [str(regression_target(x, meta["label_range"])) for x in labels]
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
            "task": task, "pair": meta["pair"], "labels": meta["labels"], "label_range": meta["label_range"],
            "regression": regression, "unk_rate": {s: round(r, 6) for s, r in unk_rates.items()},
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


def unk_rate(sp, texts: list[str]) -> float:
    """The fraction of sentencepiece pieces in `texts` that are <unk>."""
    ids = [i for encoded in sp.encode(texts) for i in encoded]
    return sum(i == sp.unk_id() for i in ids) / max(len(ids), 1)


def write_tsv(path, rows, fields):
    with open(path, "w") as f:
        f.write("\t".join(fields) + "\n")
        f.writelines("\t".join(row[k] for k in fields) + "\n" for row in rows)


if __name__ == "__main__":
    run_stage(main)
