"""prepare_mt: a joint sentencepiece model for the translation pair; the splits binarized as fairseq-preprocess
--joined-dictionary would (lib/binarize.py).

Writes data/bin/mt/: spm.model, dict.<src>.txt = dict.<tgt>.txt, {train,valid,test}.<src>-<tgt>.*,
the raw (detokenized) valid/test text as {valid,test}.raw.<lang> for sacrebleu, and caps.json.

Streamed: each split's two files are read side by side a few times (a count when a cap is set,
sentencepiece's sample of the train pairs, the encoding) and never held in memory.
"""
import itertools
import shutil
from pathlib import Path


from lib.binarize import binarize_columns
from lib.errors import DataError, log
from lib.files import atomic_dir, iter_lines, write_json
from lib.params import load_params
from lib.stage import run_stage
from lib.text import capped, kept_indices, train_sentencepiece, write_fairseq_dict

OUT = Path("data/bin/mt")
SPLITS = ("train", "valid", "test")


def main(argv):
    params = load_params()
    cfg, tr = params.prepare_mt, params.data.translation
    src, tgt = tr.source, tr.target
    raw = Path("data/raw") / tr.dataset
    for split in ("valid", "test"):  # small: checked before any work (train's check is sentencepiece's pass)
        sum(1 for _ in aligned(raw, split, src, tgt))
    available = keep = None
    if cfg.max_train_pairs is not None:
        available = sum(1 for _ in aligned(raw, "train", src, tgt))
        keep = kept_indices(available, cfg.max_train_pairs)

    def pairs(split):
        rows = aligned(raw, split, src, tgt)
        return capped(rows, keep) if split == "train" else rows

    with atomic_dir(OUT) as out:
        joint = (side for pair in pairs("train") for side in pair)
        sp = train_sentencepiece(joint, out / "spm", cfg.vocab_size, cfg.model_type,
                                 cfg.sentencepiece_sample)
        from fairseq.data import Dictionary  # here: importing fairseq logs, and run_stage has set up logging
        dictionary = Dictionary.load(str(write_fairseq_dict(sp, out / f"dict.{src}.txt")))
        shutil.copy(out / f"dict.{src}.txt", out / f"dict.{tgt}.txt")  # --joined-dictionary
        pieces, counts = {}, {}
        for split in SPLITS:
            log(f"encoding {split}")
            sides = binarize_columns(sp, dictionary, pairs(split),
                                     [out / f"{split}.{src}-{tgt}.{lang}" for lang in (src, tgt)])
            counts[split] = int(sides[0][dictionary.eos()])  # one </s> a sentence
            for lang, c in zip((src, tgt), sides):
                pieces[f"{split}.{lang}"] = int(c.sum()) - counts[split]
        for split in ("valid", "test"):  # references for sacrebleu, untouched by tokenization
            files = [open(out / f"{split}.raw.{lang}", "w") for lang in (src, tgt)]
            with files[0], files[1]:
                for pair in pairs(split):
                    for f, text in zip(files, pair):
                        f.write(text + "\n")
        write_json(out / "caps.json", {
            "dataset": tr.dataset, "source": src, "target": tgt, "max_train_pairs": cfg.max_train_pairs,
            "train_pairs_available": available or counts["train"], "pairs": counts,
            "pieces": pieces, "vocab_size": sp.get_piece_size()})
    log(f"wrote {OUT}")


def aligned(raw: Path, split: str, src: str, tgt: str):
    """(source, target) lines of one split, streamed; a file that ends before the other is an error
    (fetch checks this too; guards against hand-edited data)."""
    for number, pair in enumerate(itertools.zip_longest(iter_lines(raw / f"{split}.{src}"),
                                                        iter_lines(raw / f"{split}.{tgt}")), start=1):
        if None in pair:
            short = raw / f"{split}.{tgt if pair[1] is None else src}"
            raise DataError(short, f"ends at line {number - 1}, before {split}.{src if pair[1] is None else tgt}: "
                                   "parallel files must be line-aligned", number)
        yield pair


if __name__ == "__main__":
    run_stage(main)
