"""Text preparation shared by the prepare stages, streamed so that memory does not grow with the corpus:
seeded caps, batches, sentencepiece trained on a seeded sample, fairseq's dictionary (lib/binarize.py
encodes and binarizes)."""
import io
import itertools
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from lib.errors import log

CAP_SEED = 1  # fixed: a capped subset and sentencepiece's sample are the same on every machine and every run


def kept_indices(n: int, limit: int | None) -> np.ndarray | None:
    """The sorted indices of a seeded random subset of `limit` of `n` rows (None: keep every row). Memory:
    8 bytes per kept row (at most 8 per row while drawing), not the rows themselves."""
    if limit is None or n <= limit:
        return None
    return np.sort(np.random.default_rng(CAP_SEED).choice(n, size=limit, replace=False))


def capped(rows: Iterable, keep: np.ndarray | None) -> Iterator:
    """The rows whose index is in `keep` (sorted; None: all), in their original order, streamed."""
    if keep is None:
        yield from rows
        return
    wanted = iter(keep.tolist())
    target = next(wanted, None)
    for i, row in enumerate(rows):
        if i == target:
            yield row
            target = next(wanted, None)
            if target is None:
                return


def batched(rows: Iterable, size: int) -> Iterator[list]:
    it = iter(rows)
    while batch := list(itertools.islice(it, size)):
        yield batch


def train_sentencepiece(lines: Iterable[str], prefix: Path, vocab_size: int, model_type: str, sample_lines: int):
    """Train a sentencepiece model on a sample of at most `sample_lines` of the streamed `lines`, drawn by
    sentencepiece's own reservoir sampler (input_sentence_size) under the seed CAP_SEED: the sample, not the
    corpus, is held in memory. Writes <prefix>.model and <prefix>.vocab (piece, score) through Python, so a
    full disk raises OSError(ENOSPC) with the path (sentencepiece's own writer leaves a truncated model and
    says nothing). Returns the loaded processor."""
    import sentencepiece as spm
    spm.set_random_generator_seed(CAP_SEED)
    seen = [0]

    def counted():
        for line in lines:
            seen[0] += 1
            yield line
    log(f"sentencepiece: training {model_type} vocab {vocab_size} on a sample of at most {sample_lines:,} lines")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=counted(), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, character_coverage=1.0, input_sentence_size=sample_lines,
        shuffle_input_sentence=True, max_sentence_length=1 << 16, num_threads=os.cpu_count(),
        hard_vocab_limit=False,  # small corpora (tests, caps) may not support the full vocab size
        minloglevel=2)
    log(f"sentencepiece: trained on {min(seen[0], sample_lines):,} of {seen[0]:,} lines")
    from sentencepiece import sentencepiece_model_pb2
    proto = sentencepiece_model_pb2.ModelProto.FromString(model.getvalue())
    proto.trainer_spec.model_prefix = str(prefix)  # recorded as when sentencepiece writes the file itself
    serialized = proto.SerializeToString()
    Path(f"{prefix}.model").write_bytes(serialized)
    sp = spm.SentencePieceProcessor(model_proto=serialized)
    with open(f"{prefix}.vocab", "w") as f:  # as sentencepiece writes it: piece <TAB> score (6 digits)
        f.writelines(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size()))
    return sp


def write_fairseq_dict(sp, path: Path) -> Path:
    """fairseq's dictionary for a sentencepiece model: every piece it can emit, so no piece unseen in
    the training text (say a GLUE word absent from the corpus) becomes <unk>. fairseq adds its own
    <s>, <pad>, </s>, <unk>, so sentencepiece's control and unknown pieces are left out."""
    with open(path, "w") as f:
        for i in range(sp.get_piece_size()):
            if not (sp.is_control(i) or sp.is_unknown(i)):
                f.write(f"{sp.id_to_piece(i)} 1\n")
    return path
