"""prepare_mt: a joint sentencepiece model for the translation pair, binarized with a joined dictionary.

Writes data/bin/mt/: spm.model, dict.<src>.txt = dict.<tgt>.txt, {train,valid,test}.<src>-<tgt>.*,
the raw (detokenized) valid/test text as {valid,test}.raw.<lang> for sacrebleu, and caps.json.
"""
import tempfile
from pathlib import Path

from lib.errors import DataError, log
from lib.fairseq_cli import fairseq_preprocess
from lib.files import atomic_dir, read_lines, write_json
from lib.params import load_params
from lib.stage import run_stage
from lib.text import cap, encode_pieces, train_sentencepiece, write_fairseq_dict

OUT = Path("data/bin/mt")


def main(argv):
    params = load_params()
    cfg, tr = params.prepare_mt, params.data.translation
    src, tgt = tr.source, tr.target
    raw = Path("data/raw") / tr.dataset
    pairs = {}
    for split in ("train", "valid", "test"):
        source, target = read_lines(raw / f"{split}.{src}"), read_lines(raw / f"{split}.{tgt}")
        if len(source) != len(target):  # fetch checks this too; guard against hand-edited data
            raise DataError(raw / f"{split}.{tgt}", f"{len(target)} lines but {split}.{src} has {len(source)}",
                            min(len(source), len(target)) + 1)
        pairs[split] = list(zip(source, target))
    available = len(pairs["train"])
    pairs["train"] = cap(pairs["train"], cfg.max_train_pairs)

    with atomic_dir(OUT) as out, tempfile.TemporaryDirectory() as tmp:
        joint = [s for pair in pairs["train"] for s in pair]
        sp = train_sentencepiece(joint, out / "spm", cfg.vocab_size, cfg.model_type)
        pieces = {}
        for split, split_pairs in pairs.items():
            for lang, side in ((src, 0), (tgt, 1)):
                pieces[f"{split}.{lang}"] = encode_pieces(sp, [p[side] for p in split_pairs],
                                                          Path(tmp) / f"{split}.{lang}")
        log(f"encoded {pieces} pieces; binarizing")
        fairseq_preprocess(out, ["--source-lang", src, "--target-lang", tgt, "--joined-dictionary",
                                 "--srcdict", write_fairseq_dict(sp, Path(tmp) / "dict.txt"),
                                 "--trainpref", f"{tmp}/train", "--validpref", f"{tmp}/valid",
                                 "--testpref", f"{tmp}/test"])
        for split in ("valid", "test"):  # references for sacrebleu, untouched by tokenization
            for lang, side in ((src, 0), (tgt, 1)):
                (out / f"{split}.raw.{lang}").write_text("".join(p[side] + "\n" for p in pairs[split]))
        write_json(out / "caps.json", {
            "dataset": tr.dataset, "source": src, "target": tgt, "max_train_pairs": cfg.max_train_pairs,
            "train_pairs_available": available, "pairs": {s: len(p) for s, p in pairs.items()},
            "pieces": pieces, "vocab_size": sp.get_piece_size()})
    log(f"wrote {OUT}")


if __name__ == "__main__":
    run_stage(main)
