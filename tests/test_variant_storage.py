"""How a variant's matrices lie on disk (lib/variant_weights.compact): each in the smaller of its dense and sparse
forms, loading back exactly the weights of the dense form, so that a pruned variant's file follows its non-zeros
(issue 32: at most 1.5x the zip of what they need)."""
import json

import pytest
import torch

from stages.compress import packed_tensors, prune, zip_bytes
from lib.variant_weights import compact, dense, dequantize, load_variant, quantize
from lib.variants import FAIRSEQ_FP32, SIMULATED, VARIANT_FILE, WEIGHTS_FILE


def layer_matrices(hidden: int, layers: int) -> dict:
    """Random normal matrices with the shapes (and fairseq names) of Transformer encoder layers."""
    generator = torch.Generator().manual_seed(0)
    shapes = {**{f"self_attn.{p}_proj": (hidden, hidden) for p in ("q", "k", "v", "out")},
              "fc1": (4 * hidden, hidden), "fc2": (hidden, 4 * hidden)}
    return {f"encoder.sentence_encoder.layers.{i}.{name}.weight": torch.randn(shape, generator=generator)
            for i in range(layers) for name, shape in shapes.items()}


def dense_form(pruned: dict, bits: int) -> dict:
    """What stages.compress stores for a variant before compact: fp32 matrices, or quantize's codes and scales."""
    return pruned if bits == 32 else {k: quantize(w, bits, "channel")[0] for k, w in pruned.items()}


def write_variant(directory, stored: dict, bits: int) -> dict:
    """A variant directory as stages.compress writes it (its source: zero matrices and an embedding); returns
    the source checkpoint."""
    source = {"model": {**{k: torch.zeros_like(dense(v)) for k, v in stored.items()},
                        "encoder.sentence_encoder.embed_tokens.weight": torch.randn(50, 8)}}
    torch.save(source, directory / "source.pt")
    (directory / VARIANT_FILE).write_text(json.dumps({"format": FAIRSEQ_FP32 if bits == 32 else SIMULATED,
                                                      "source": str(directory / "source.pt")}))
    with open(directory / WEIGHTS_FILE, "wb") as f:
        torch.save({k: compact(v) for k, v in stored.items()}, f)
    return source


@pytest.mark.parametrize("bits", [32, 4, 6, 8])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
def test_every_form_loads_back_exactly_the_dense_weights(tmp_path, sparsity, bits):
    pruned = prune(layer_matrices(32, 2), sparsity, "global")
    first = next(iter(pruned))
    pruned[first][0, 0] = -0.0  # a zero whose bits are not: fp32 comes back bit for bit all the same
    stored = dense_form(pruned, bits)
    source = write_variant(tmp_path, stored, bits)
    on_disk = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)  # torch's own weights-only loader
    sparse = {k for k, v in on_disk.items() if isinstance(v, dict) and "mask" in v}
    # dense without pruning (rounding alone zeroes too few codes), sparse from 50%
    assert sparse == (set() if sparsity == 0 else set(stored)), sorted(sparse)
    loaded = load_variant(tmp_path)["model"]
    for k, v in stored.items():
        expected = v if bits == 32 else dequantize(v)
        assert loaded[k].dtype == torch.float32 and torch.equal(loaded[k], expected), k
        assert torch.equal(loaded[k].view(torch.int32), expected.view(torch.int32)), k
        assert torch.equal(dense(on_disk[k]), expected), k
    assert torch.equal(loaded["encoder.sentence_encoder.embed_tokens.weight"],
                       source["model"]["encoder.sentence_encoder.embed_tokens.weight"])


@pytest.mark.parametrize("bits", [32, 4])
def test_a_90_percent_sparse_variant_takes_at_most_one_and_a_half_times_its_zip(tmp_path, bits):
    stored = dense_form(prune(layer_matrices(256, 2), 0.9, "global"), bits)
    write_variant(tmp_path, stored, bits)
    with open(tmp_path / "dense.pt", "wb") as f:
        torch.save(stored, f)  # as variants were stored before
    size, needed = (tmp_path / WEIGHTS_FILE).stat().st_size, zip_bytes(packed_tensors(stored))
    assert size <= 1.5 * needed, (size, needed)
    assert size < (tmp_path / "dense.pt").stat().st_size
