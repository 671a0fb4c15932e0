"""prepare_mlm: sentencepiece model on the corpus' train split, then fairseq-preprocess --only-source.

Writes data/bin/mlm/: spm.model, dict.txt (every sentencepiece piece; shared with GLUE), {train,valid,test}.{bin,idx}, caps.json,
and unigram.json: the bits per token of the valid split under a unigram model of the train split (counts
plus one), the loss a masked LM reaches by predicting each piece's frequency alone, whatever its context.
Blank lines are dropped (pretraining packs the text into contiguous blocks: --sample-break-mode none).
"""
import math
import tempfile
from collections import Counter
from pathlib import Path

from lib.errors import DataError, log
from lib.fairseq_cli import fairseq_preprocess
from lib.files import atomic_dir, read_lines, write_json
from lib.params import load_params
from lib.stage import run_stage
from lib.text import cap, encode_pieces, train_sentencepiece, write_fairseq_dict

OUT = Path("data/bin/mlm")


def main(argv):
    params = load_params()
    cfg = params.prepare_mlm
    raw = Path("data/raw") / params.data.corpus
    splits = {}
    for split in ("train", "valid", "test"):
        lines = [line.strip() for line in read_lines(raw / f"{split}.txt") if line.strip()]
        if not lines:
            raise DataError(raw / f"{split}.txt", "no non-blank lines")
        splits[split] = lines
    available = len(splits["train"])
    splits["train"] = cap(splits["train"], cfg.max_train_lines)

    with atomic_dir(OUT) as out, tempfile.TemporaryDirectory() as tmp:
        sp = train_sentencepiece(splits["train"], out / "spm", cfg.vocab_size, cfg.model_type)
        pieces = {s: encode_pieces(sp, lines, Path(tmp) / f"{s}.spm") for s, lines in splits.items()}
        log(f"encoded {pieces} pieces; binarizing")
        fairseq_preprocess(out, ["--only-source", "--srcdict", write_fairseq_dict(sp, Path(tmp) / "dict.txt"),
                                 "--trainpref", f"{tmp}/train.spm",
                                 "--validpref", f"{tmp}/valid.spm", "--testpref", f"{tmp}/test.spm"])
        write_json(out / "caps.json", {
            "corpus": params.data.corpus, "max_train_lines": cfg.max_train_lines,
            "train_lines_available": available, "lines": {s: len(v) for s, v in splits.items()},
            "pieces": pieces, "vocab_size": sp.get_piece_size()})
        write_json(out / "unigram.json", {"valid_bits": round(unigram_bits(Path(tmp) / "train.spm",
                                                                           Path(tmp) / "valid.spm"), 4),
                                          "smoothing": "add-one over the pieces of train and valid"})
    log(f"wrote {OUT}")


def unigram_bits(train: Path, valid: Path) -> float:
    """Cross-entropy in bits per token of `valid` under add-one unigram counts of `train` (files of
    space-separated pieces, one line each; each line also ends with the end-of-sentence token that
    fairseq-preprocess appends and the masked LM predicts like any other)."""
    def counts(path):
        c = Counter()
        for line in path.read_text().splitlines():
            c.update(line.split())
            c["</s>"] += 1
        return c
    train_counts, valid_counts = counts(train), counts(valid)
    vocab = set(train_counts) | set(valid_counts)
    total = sum(train_counts.values()) + len(vocab)
    bits = sum(n * -math.log2((train_counts[w] + 1) / total) for w, n in valid_counts.items())
    return bits / sum(valid_counts.values())


if __name__ == "__main__":
    run_stage(main)
