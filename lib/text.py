"""Text preparation shared by the prepare stages: seeded caps, sentencepiece, fairseq's dictionary."""
import os
from pathlib import Path

from lib.errors import log


CAP_SEED = 1  # fixed: a capped subset is the same on every machine and every run


def cap(rows: list, limit: int | None) -> list:
    """A seeded random subset of at most `limit` rows, in their original order (None: all rows)."""
    if limit is None or len(rows) <= limit:
        return rows
    import random
    keep = sorted(random.Random(CAP_SEED).sample(range(len(rows)), limit))
    return [rows[i] for i in keep]


def train_sentencepiece(lines: list[str], prefix: Path, vocab_size: int, model_type: str):
    """Train a sentencepiece model on `lines`; returns the loaded processor."""
    import sentencepiece as spm
    spm.set_random_generator_seed(CAP_SEED)
    log(f"sentencepiece: training {model_type} vocab {vocab_size} on {len(lines)} lines")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(prefix), vocab_size=vocab_size,
        model_type=model_type, character_coverage=1.0, input_sentence_size=2_000_000,
        shuffle_input_sentence=True, max_sentence_length=1 << 16, num_threads=os.cpu_count(),
        hard_vocab_limit=False,  # small corpora (tests, caps) may not support the full vocab size
        minloglevel=2)
    return spm.SentencePieceProcessor(model_file=f"{prefix}.model")


def write_fairseq_dict(sp, path: Path) -> Path:
    """fairseq's dictionary for a sentencepiece model: every piece it can emit, so no piece unseen in
    the training text (say a GLUE word absent from the corpus) becomes <unk>. fairseq adds its own
    <s>, <pad>, </s>, <unk>, so sentencepiece's control and unknown pieces are left out."""
    with open(path, "w") as f:
        for i in range(sp.get_piece_size()):
            if not (sp.is_control(i) or sp.is_unknown(i)):
                f.write(f"{sp.id_to_piece(i)} 1\n")
    return path


def encode_pieces(sp, lines: list[str], path: Path) -> int:
    """Write `lines` as space-separated sentencepiece pieces, the input fairseq-preprocess expects.
    Returns the number of pieces."""
    n = 0
    with open(path, "w") as f:
        for pieces in sp.encode(lines, out_type=str):
            f.write(" ".join(pieces) + "\n")
            n += len(pieces)
    return n
