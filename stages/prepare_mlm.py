"""prepare_mlm: sentencepiece model on the corpus' train split, then the splits binarized as fairseq-preprocess
--only-source would (lib/binarize.py).

Writes data/bin/mlm/: spm.model, dict.txt (every sentencepiece piece; shared with GLUE), {train,valid,test}.{bin,idx}, caps.json,
and unigram.json: the bits per token of the valid split under a unigram model of the train split (counts
plus one), the loss a masked LM reaches by predicting each piece's frequency alone, whatever its context.
Blank lines are dropped (pretraining packs the text into contiguous blocks: --sample-break-mode none).

Streamed: the corpus is read a few times (a count when a cap is set, sentencepiece's sample, the encoding)
and never held in memory; the unigram counts are taken while binarizing.
"""
from pathlib import Path

import numpy as np

from lib.binarize import binarize_columns
from lib.errors import DataError, log
from lib.files import atomic_dir, iter_lines, write_json
from lib.params import load_params
from lib.stage import run_stage
from lib.text import capped, kept_indices, train_sentencepiece, write_fairseq_dict

OUT = Path("data/bin/mlm")
SPLITS = ("train", "valid", "test")


def main(argv):
    params = load_params()
    cfg = params.prepare_mlm
    raw = Path("data/raw") / params.data.corpus
    for split in SPLITS:  # before any work
        if next(text_lines(raw / f"{split}.txt"), None) is None:
            raise DataError(raw / f"{split}.txt", "no non-blank lines")
    available = keep = None
    if cfg.max_train_lines is not None:
        available = sum(1 for _ in text_lines(raw / "train.txt"))
        keep = kept_indices(available, cfg.max_train_lines)

    def split_lines(split):
        lines = text_lines(raw / f"{split}.txt")
        return capped(lines, keep) if split == "train" else lines

    with atomic_dir(OUT) as out:
        sp = train_sentencepiece(split_lines("train"), out / "spm", cfg.vocab_size, cfg.model_type,
                                 cfg.sentencepiece_sample)
        from fairseq.data import Dictionary  # here: importing fairseq logs, and run_stage has set up logging
        dictionary = Dictionary.load(str(write_fairseq_dict(sp, out / "dict.txt")))
        counts = {}
        for split in SPLITS:
            log(f"encoding {split}")
            counts[split], = binarize_columns(sp, dictionary, ((line,) for line in split_lines(split)), [out / split])
        lines = {s: int(c[dictionary.eos()]) for s, c in counts.items()}  # one </s> a line
        write_json(out / "caps.json", {
            "corpus": params.data.corpus, "max_train_lines": cfg.max_train_lines,
            "train_lines_available": available or lines["train"], "lines": lines,
            "pieces": {s: int(c.sum()) - lines[s] for s, c in counts.items()}, "vocab_size": sp.get_piece_size()})
        write_json(out / "unigram.json", {"valid_bits": round(unigram_bits(counts["train"], counts["valid"]), 4),
                                          "smoothing": "add-one over the pieces of train and valid"})
    log(f"wrote {OUT}")


def text_lines(path: Path):
    """The non-blank lines of a corpus file, stripped (pretraining packs text into contiguous blocks)."""
    for line in iter_lines(path):
        if line.strip():
            yield line.strip()


def unigram_bits(train: np.ndarray, valid: np.ndarray) -> float:
    """Cross-entropy in bits per token of the valid split under add-one unigram counts of the train split,
    from each split's count of every dictionary id. </s>, which ends every line and which the masked LM
    predicts like any other token, is one of them."""
    vocab = int(((train > 0) | (valid > 0)).sum())
    p = (train + 1) / (train.sum() + vocab)
    return float(-(valid * np.log2(p)).sum() / valid.sum())


if __name__ == "__main__":
    run_stage(main)
