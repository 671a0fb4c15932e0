"""The masked-LM batches built a batch at a time (lib/masked_lm_batches.py) against fairseq's own masked_lm
pipeline on the same corpus: the same batches of the same blocks, fairseq's masking rule, masks the same
however many loader workers build them and new every epoch."""
import numpy as np
import pytest
import torch

from lib.masked_lm_batches import MaskedBlocks, batched_masking

TOKENS_PER_SAMPLE = 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A binarized masked-LM split in fairseq's mmap format: 400 sentences of 3-30 tokens over 60 symbols."""
    from fairseq.data import Dictionary, indexed_dataset
    root = tmp_path_factory.mktemp("mlm")
    vocab = Dictionary()
    for i in range(60):
        vocab.add_symbol(f"w{i}")
    vocab.save(str(root / "dict.txt"))
    rng = np.random.default_rng(0)
    for split, sentences in (("train", 400), ("valid", 40)):
        builder = indexed_dataset.make_builder(str(root / f"{split}.bin"), impl="mmap", vocab_size=len(vocab))
        for _ in range(sentences):
            ids = rng.integers(vocab.nspecial, len(vocab), size=rng.integers(3, 31))
            builder.add_item(torch.tensor([*ids, vocab.eos()], dtype=torch.int32))
        builder.finalize(str(root / f"{split}.idx"))
    return root


def masked_lm_task(corpus, *flags):
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    args = [str(corpus), "--task", "masked_lm", "--criterion", "masked_lm", "--arch", "roberta", "--cpu",
            "--sample-break-mode", "none", "--tokens-per-sample", str(TOKENS_PER_SAMPLE), "--seed", "3",
            "--max-tokens", "256", *flags]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), args))
    return cfg, tasks.setup_task(cfg.task)


def epoch_batches(corpus, batched: bool, workers: int = 0, epochs=(1,), flags=()):
    """{epoch: the batches of one pass over train}, built by fairseq's pipeline or the batched one."""
    cfg, task = masked_lm_task(corpus, *flags)
    if batched:
        with batched_masking():
            task.load_dataset("train")
    else:
        task.load_dataset("train")
    iterator = task.get_batch_iterator(dataset=task.dataset("train"), max_tokens=cfg.dataset.max_tokens,
                                       max_positions=task.max_positions(), seed=3, num_workers=workers)
    out = {}
    for epoch in epochs:
        out[epoch] = list(iterator.next_epoch_itr(shuffle=True))
        assert iterator.epoch == epoch
    return task, out


def unmasked(batch, pad):
    """The sequences before masking: the target's token wherever one was chosen, else the source's."""
    return torch.where(batch["target"] != pad, batch["target"], batch["net_input"]["src_tokens"])


def test_the_batches_hold_fairseqs_blocks_in_fairseqs_order(corpus):
    task, ours = epoch_batches(corpus, batched=True)
    _, theirs = epoch_batches(corpus, batched=False)
    assert isinstance(task.dataset("train"), MaskedBlocks)
    pad = task.source_dictionary.pad()
    assert len(ours[1]) == len(theirs[1]) > 5
    for a, b in zip(ours[1], theirs[1]):
        assert torch.equal(a["id"], b["id"]) and torch.equal(a["net_input"]["src_id"], b["net_input"]["src_id"])
        assert a["net_input"]["src_tokens"].shape == b["net_input"]["src_tokens"].shape
        assert torch.equal(unmasked(a, pad), unmasked(b, pad))
        assert torch.equal(a["net_input"]["src_lengths"], b["net_input"]["src_lengths"])
        assert (a["ntokens"], a["nsentences"]) == (b["ntokens"], b["nsentences"])
        assert a["net_input"]["src_tokens"].dtype == b["net_input"]["src_tokens"].dtype == torch.int64


def test_masking_follows_fairseqs_rule(corpus):
    """int(0.15 * length + U) positions a sequence; of those 80% <mask>, 10% kept, 10% a random non-special
    token; the target holds the original at every chosen position and padding elsewhere."""
    task, ours = epoch_batches(corpus, batched=True, epochs=(1, 2, 3))
    vocab, mask_idx = task.source_dictionary, task.mask_idx
    pad = vocab.pad()
    chosen_share, kinds = [], np.zeros(3)
    for batch in (b for batches in ours.values() for b in batches):
        source, target = batch["net_input"]["src_tokens"], batch["target"]
        original, chosen = unmasked(batch, pad), target != pad
        lengths = (source != pad).sum(1)
        counts = chosen.sum(1)
        assert torch.all((counts == (0.15 * lengths).floor()) | (counts == (0.15 * lengths).floor() + 1))
        assert not torch.any(chosen & (source == pad))
        assert torch.equal(source[~chosen], original[~chosen])
        picked = source[chosen]
        replaced = (picked != mask_idx) & (picked != original[chosen])
        assert torch.all(picked[replaced] >= vocab.nspecial)
        kinds += [(picked == mask_idx).sum(), (picked == original[chosen]).sum(), replaced.sum()]
        chosen_share.append(chosen.sum() / (source != pad).sum())
    shares = kinds / kinds.sum()
    assert kinds.sum() > 1500
    assert abs(shares[0] - 0.8) < 0.04 and abs(shares[1] - 0.1) < 0.03 and abs(shares[2] - 0.1) < 0.03, shares
    assert abs(float(np.mean(chosen_share)) - 0.15) < 0.01


def test_masks_are_the_same_with_loader_workers_and_new_every_epoch(corpus):
    """fairseq reuses its loader workers across epochs; the epoch must still reach them."""
    _, serial = epoch_batches(corpus, batched=True, workers=0, epochs=(1, 2))
    _, parallel = epoch_batches(corpus, batched=True, workers=2, epochs=(1, 2))
    for epoch in (1, 2):
        for a, b in zip(serial[epoch], parallel[epoch], strict=True):
            assert torch.equal(a["net_input"]["src_tokens"], b["net_input"]["src_tokens"])
            assert torch.equal(a["target"], b["target"])
    first = {tuple(b["id"].tolist()): b["target"] for b in parallel[1]}
    second = {tuple(b["id"].tolist()): b["target"] for b in parallel[2]}
    same = [k for k in first if k in second]
    assert same and not all(torch.equal(first[k], second[k]) for k in same)


def test_options_it_does_not_implement_get_fairseqs_own_pipeline(corpus):
    cfg, task = masked_lm_task(corpus, "--mask-multiple-length", "2")
    with batched_masking():
        task.load_dataset("train")
    assert not isinstance(task.dataset("train"), MaskedBlocks)
    from fairseq.tasks.masked_lm import MaskedLMTask
    assert MaskedLMTask.load_dataset.__qualname__ == "MaskedLMTask.load_dataset"  # restored on exit


def test_a_corpus_holding_the_mask_symbol_is_refused(corpus):
    _, task = masked_lm_task(corpus)
    with batched_masking():
        task.load_dataset("valid")
    dataset = task.dataset("valid")
    dataset.tokens = dataset.tokens.copy()
    dataset.tokens[5] = task.mask_idx
    with pytest.raises(ValueError, match="<mask>"):
        dataset.collater([0, 1])
