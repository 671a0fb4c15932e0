"""fairseq's masked_lm training data built a batch at a time: the same blocks, batches and masking rule as
fairseq's own pipeline, at tens of batches a second on one core instead of a few.

fairseq's masked_lm task builds every sequence in Python: a TokenBlockDataset block, <s> prepended, then
MaskTokensDataset twice (the source and the target are two instances, each drawing the item's mask with its
own seeded generator), then padding. At the paper batch (512 x 128 tokens) that is ~230 ms a batch on one core
(reports/loader.md), 89% of it in the masking: a GPU training the paper's small sizes would wait on it.

MaskedBlocks is the dataset that task builds, as one object whose collater does the work for the whole batch
with numpy: the blocks sliced from the binarized corpus (the .bin file, memory-mapped), <s> prepended, and
RoBERTa's dynamic masking drawn once per batch. It keeps fairseq's order of examples (a seeded shuffle, then
by size), so the batches hold the same blocks; and fairseq's rule per sequence: int(mask_prob * length + U)
positions (<s> and </s> included), without replacement; of those, leave_unmasked_prob kept,
random_token_prob replaced by a token drawn uniformly over the non-special symbols (<mask> included, as
fairseq's weights do), the rest <mask>; the target holds the original token at every chosen position. The
masks are different draws than fairseq's (one generator a batch, seeded by the seed, the epoch and the batch's
indices, instead of one a sequence), so the same for a batch however many loader workers build it and when a
run resumes. The epoch reaches persistent loader workers through shared memory: fairseq reuses its workers
from epoch to epoch, where its own MaskTokensDataset keeps the epoch the workers were started with (so the same
masks every epoch).

The checkpoint's task stays `masked_lm` (fairseq's own tools load it): only how training batches are built
changes, inside `batched_masking()` (lib/harness.fairseq_hooks installs it for every training run). A recipe
using masking options this does not implement (whole words, spans, frequency-weighted replacement, another
break mode, shortening) gets fairseq's own pipeline."""
import contextlib
import multiprocessing

import numpy as np
import torch
from fairseq.data import FairseqDataset, data_utils
from fairseq.data.indexed_dataset import MMapIndexedDataset


class MaskedBlocks(FairseqDataset):
    """Blocks of `block` tokens of the token stream of `corpus` (a split in fairseq's mmap format whose
    flat_tokens is not None; the last block shorter), each with `bos` prepended, masked a batch at a time.
    `vocab_size` counts every symbol (<mask> included); random replacements are drawn from [nspecial, vocab_size)."""

    def __init__(self, corpus: MMapIndexedDataset, block: int, *, bos: int, pad: int, mask_idx: int,
                 vocab_size: int, nspecial: int, seed: int, mask_prob: float, leave_unmasked_prob: float,
                 random_token_prob: float):
        assert 0.0 < mask_prob < 1.0 and leave_unmasked_prob + random_token_prob <= 1.0
        # the tokens are a view of the corpus's memory map, which closes when the corpus object goes: kept together
        self.corpus, self.tokens, self.block = corpus, flat_tokens(corpus), block
        blocks = -(-len(self.tokens) // block)
        self.sizes = np.full(blocks, block + 1, dtype=np.int64)
        if blocks:
            self.sizes[-1] = len(self.tokens) - (blocks - 1) * block + 1
        self.bos, self.pad, self.mask_idx, self.vocab_size, self.nspecial = bos, pad, mask_idx, vocab_size, nspecial
        self.seed, self.mask_prob = seed, mask_prob
        self.leave_unmasked_prob, self.random_token_prob = leave_unmasked_prob, random_token_prob
        self._epoch = multiprocessing.RawValue("q", 1)  # shared with loader workers forked or spawned later

    def __getstate__(self):  # a loader worker started by spawn: the corpus travels as its path, not its tokens
        return {k: v for k, v in self.__dict__.items() if k != "tokens"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.tokens = flat_tokens(self.corpus)

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, index):
        return index  # the work is done a batch at a time, in collater

    def num_tokens(self, index):
        return self.sizes[index]

    def num_tokens_vec(self, indices):
        return self.sizes[indices]

    def size(self, index):
        return self.sizes[index]

    def ordered_indices(self):
        """fairseq masked_lm's order: a permutation seeded by the seed, then by size (SortDataset)."""
        with data_utils.numpy_seed(self.seed):
            shuffle = np.random.permutation(len(self))
        return np.lexsort([shuffle, self.sizes])

    @property
    def can_reuse_epoch_itr_across_epochs(self):
        return True  # only the masks change from epoch to epoch

    def set_epoch(self, epoch):
        self._epoch.value = epoch

    @property
    def epoch(self) -> int:
        return self._epoch.value

    def sequences(self, indices: np.ndarray) -> np.ndarray:
        """The blocks of `indices` with <s> prepended, right-padded to the longest: int64 [batch, width]."""
        width = int(self.sizes[indices].max())
        starts = indices * self.block
        positions = starts[:, None] + np.arange(width - 1)
        inside = positions < np.minimum(starts + self.block, len(self.tokens))[:, None]
        out = np.full((len(indices), width), self.pad, dtype=np.int64)
        out[:, 0] = self.bos
        out[:, 1:][inside] = self.tokens[positions[inside]]
        return out

    def mask(self, source: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(masked source, target) for the unmasked `source` rows of `indices`: fairseq's rule, one draw a batch."""
        rng = np.random.default_rng([self.seed, self.epoch, *indices.tolist()])
        real = source != self.pad
        lengths = real.sum(axis=1)
        chosen_count = (self.mask_prob * lengths + rng.random(len(source))).astype(np.int64)
        keys = np.where(real, rng.random(source.shape), 2.0)  # padding sorts last: never chosen
        rank = np.empty_like(source)
        np.put_along_axis(rank, np.argsort(keys, axis=1), np.arange(source.shape[1])[None, :], axis=1)
        chosen = rank < chosen_count[:, None]
        target = np.where(chosen, source, self.pad)
        decision = rng.random(source.shape)
        keep = chosen & (decision < self.leave_unmasked_prob)
        random = chosen & ~keep & (decision < self.leave_unmasked_prob + self.random_token_prob)
        masked = np.where(chosen & ~keep & ~random, self.mask_idx, source)
        masked[random] = rng.integers(self.nspecial, self.vocab_size, size=int(random.sum()))
        return masked, target

    def collater(self, samples):
        """The batch of fairseq's masked_lm (NestedDictionaryDataset of its _regular_dataset) for `samples`,
        the indices __getitem__ returned."""
        if not samples:
            return {}
        indices = np.asarray(samples, dtype=np.int64)
        source = self.sequences(indices)
        if (source == self.mask_idx).any():
            raise ValueError(f"the corpus holds the <mask> symbol (index {self.mask_idx}): masked-LM data must not")
        masked, target = self.mask(source, indices)
        lengths = torch.from_numpy((source != self.pad).sum(axis=1))
        ids = torch.from_numpy(indices)
        return {"id": ids, "net_input": {"src_tokens": torch.from_numpy(masked), "src_lengths": lengths,
                                         "src_id": ids.clone()},
                "target": torch.from_numpy(target), "nsentences": len(indices), "ntokens": int(lengths.sum())}


def flat_tokens(dataset) -> np.ndarray | None:
    """The token stream of a binarized split (fairseq's mmap format), every sentence in order, as a read-only
    view of its .bin file; None for another format or a split whose sentences are not stored end to end."""
    if not isinstance(dataset, MMapIndexedDataset):
        return None
    index = dataset._index
    tokens = np.frombuffer(dataset._bin_buffer, dtype=index.dtype)
    itemsize = np.dtype(index.dtype).itemsize
    if len(index) and (index._pointers[0] != 0 or index._pointers[-1] // itemsize + index._sizes[-1] != len(tokens)):
        return None
    return tokens


def supported(cfg) -> bool:
    """Whether masked_lm's config uses only what MaskedBlocks implements."""
    return (cfg.sample_break_mode == "none" and cfg.shorten_method == "none" and not cfg.mask_whole_words
            and cfg.mask_multiple_length == 1 and cfg.mask_stdev == 0.0 and not cfg.freq_weighted_replacement
            and not cfg.include_target_tokens and cfg.include_index and not cfg.skip_masking
            and not cfg.d2v2_multi)


@contextlib.contextmanager
def batched_masking():
    """fairseq's masked_lm task loads its splits as MaskedBlocks while this is active (its own pipeline where
    the config or the data format is one MaskedBlocks does not handle)."""
    import os
    from fairseq import utils
    from fairseq.tasks.masked_lm import MaskedLMTask

    original = MaskedLMTask.load_dataset

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        if not supported(self.cfg):  # decided before opening the split, which fairseq's pipeline opens again
            return original(self, split, epoch=epoch, combine=combine, **kwargs)
        paths = utils.split_paths(self.cfg.data)
        dataset = data_utils.load_indexed_dataset(os.path.join(paths[(epoch - 1) % len(paths)], split),
                                                  self.source_dictionary, combine=combine)
        if dataset is None or flat_tokens(dataset) is None:  # missing (fairseq names it) or not one mmap stream
            return original(self, split, epoch=epoch, combine=combine, **kwargs)
        vocab = self.source_dictionary
        self.datasets[split] = MaskedBlocks(
            dataset, self.cfg.tokens_per_sample - 1, bos=vocab.bos(), pad=vocab.pad(), mask_idx=self.mask_idx,
            vocab_size=len(vocab), nspecial=vocab.nspecial, seed=self.cfg.seed, mask_prob=self.cfg.mask_prob,
            leave_unmasked_prob=self.cfg.leave_unmasked_prob, random_token_prob=self.cfg.random_token_prob)

    MaskedLMTask.load_dataset = load_dataset
    try:
        yield
    finally:
        MaskedLMTask.load_dataset = original
