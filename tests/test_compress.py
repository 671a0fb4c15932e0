"""Compression of tiny trained models: every variant exists, loads and is what its variant.json says."""
import json
from pathlib import Path

import pytest
import torch

from conftest import set_params
from stages import compress
from stages.compress import LAYER_MATRIX
from lib.checkpoints import load_checkpoint
from lib.errors import StageError
from lib.variants import WEIGHTS_FILE
from lib.variant_weights import dense, load_variant


def compress_params(**edits):
    def edit(p):
        p["compress"] = {"sparsities": [0.0, 0.5, 0.9], "pruning": "global", "bits": [4, 8],
                         "granularity": "channel", "onnx_sparsities": [],
                         "int8_min_agreement": 0.9, "int8_check_examples": 32,
                         "recovery": {"seconds": None, "updates": None}, **edits}
    return edit


def variants(out: Path) -> dict:
    return {d.name: json.loads((d / "variant.json").read_text()) for d in sorted(out.iterdir())}


def layer_matrices(state: dict) -> dict:
    return {k: v for k, v in state.items() if LAYER_MATRIX.search(k)}


def test_every_sparsity_and_bits_variant_exists_loads_and_is_truly_sparse(in_trained_project):
    set_params(in_trained_project, compress_params())
    compress.main(["glue", "T2", "sst2"])
    out = Path("models/compressed/T2-sst2")
    found = variants(out)
    assert sorted(found) == sorted(f"s{s}-{b}" for s in ("0.00", "0.50", "0.90") for b in ("fp32", "q4", "q8"))
    source = load_checkpoint(Path("models/finetune/T2-sst2/checkpoint.pt"))["model"]
    for name, v in found.items():
        assert v["size"] == "T2" and v["task"] == "sst2" and v["layers"] == 2 and v["hidden"] == 48
        assert abs(v["sparsity"] - v["target_sparsity"]) < 0.01, name
        state = load_variant(out / name)["model"]
        assert state.keys() == source.keys()
        matrices = layer_matrices(state)
        zeros = sum(int((w == 0).sum()) for w in matrices.values())
        assert zeros / sum(w.numel() for w in matrices.values()) >= v["sparsity"] - 1e-5
        # only the layer matrices changed; embeddings, norms, biases and the head are untouched
        assert all(torch.equal(state[k], source[k]) for k in state if k not in matrices)
        assert v["nonzero_parameters"] <= v["parameters"] - zeros + 10
    # pruned weights are zero in the saved file itself, not only after loading: it holds only the non-zeros
    saved = torch.load(out / "s0.90-fp32" / WEIGHTS_FILE, weights_only=True)
    assert all(set(m) == {"mask", "values", "shape"} for m in saved.values())  # the sparse form
    weights = sum(dense(m).numel() for m in saved.values())
    assert sum(int((dense(m) == 0).sum()) for m in saved.values()) >= 0.9 * weights - 1
    assert sum(m["values"].numel() for m in saved.values()) <= 0.1 * weights + 1
    # storage follows bits and sparsity
    for s in ("0.00", "0.50", "0.90"):
        assert found[f"s{s}-q4"]["bytes"] < found[f"s{s}-q8"]["bytes"] < found[f"s{s}-fp32"]["bytes"]
        assert (out / f"s{s}-q4" / WEIGHTS_FILE).stat().st_size < (out / f"s{s}-fp32" / WEIGHTS_FILE).stat().st_size
    for name, v in found.items():  # the real size of the file, whatever form it stores
        assert v["files"] == {WEIGHTS_FILE: (out / name / WEIGHTS_FILE).stat().st_size}
    for b in ("fp32", "q4", "q8"):  # the file follows the non-zeros
        sizes = [(out / f"s{s}-{b}" / WEIGHTS_FILE).stat().st_size for s in ("0.90", "0.50", "0.00")]
        assert sizes[0] < sizes[1] <= sizes[2], (b, sizes)
    assert found["s0.90-fp32"]["bytes_zip"] < found["s0.50-fp32"]["bytes_zip"] < found["s0.00-fp32"]["bytes_zip"]
    assert found["s0.00-fp32"]["bytes"] == 4 * found["s0.00-fp32"]["parameters"]


def test_quantization_error_is_within_half_a_step_and_keeps_pruned_zeros(in_trained_project):
    set_params(in_trained_project, compress_params(sparsities=[0.5], bits=[3, 6], granularity="tensor"))
    compress.main(["glue", "T1", "sst2"])
    out = Path("models/compressed/T1-sst2")
    pruned = torch.load(out / "s0.50-fp32" / WEIGHTS_FILE, weights_only=True)
    for bits in (3, 6):
        stored = torch.load(out / f"s0.50-q{bits}" / WEIGHTS_FILE, weights_only=True)
        for k, w in pruned.items():
            q, w = stored[k], dense(w)
            assert q["scale"].numel() == 1  # per tensor
            assert (dense(q) - w).abs().max() <= q["scale"] / 2 + 1e-6
            assert torch.all(dense(q)[w == 0] == 0)
            levels = torch.unique(torch.round(dense(q) / q["scale"]))
            assert len(levels) <= 2 ** bits - 1


def test_layer_scope_prunes_every_matrix_to_the_target(in_trained_project):
    set_params(in_trained_project, compress_params(sparsities=[0.7], bits=[8], pruning="layer"))
    compress.main(["glue", "T1", "sst2"])
    saved = torch.load(Path("models/compressed/T1-sst2/s0.70-fp32") / WEIGHTS_FILE, weights_only=True)
    for k, w in saved.items():
        assert abs(float((dense(w) == 0).float().mean()) - 0.7) < 0.02, k


def test_translation_model_variants_load(in_trained_project):
    set_params(in_trained_project, compress_params(sparsities=[0.0, 0.6], bits=[6]))
    compress.main(["mt", "T1"])
    found = variants(Path("models/compressed/mt-T1"))
    assert sorted(found) == ["s0.00-fp32", "s0.00-q6", "s0.60-fp32", "s0.60-q6"]
    state = load_variant(Path("models/compressed/mt-T1/s0.60-q6"))["model"]
    names = list(layer_matrices(state))
    assert any(".encoder_attn." in k for k in names) and any(k.startswith("encoder.") for k in names)
    assert found["s0.60-q6"]["task"] == "translation"
    # shared embeddings and the tied output projection count once
    source = load_checkpoint(Path("models/mt/T1/checkpoint.pt"))["model"]
    tied = ("decoder.embed_tokens.weight", "decoder.output_projection.weight")
    assert found["s0.00-fp32"]["parameters"] == sum(v.numel() for k, v in source.items() if torch.is_floating_point(v)
                                                    and not k.endswith("version") and k not in tied)


def test_classifier_size_leaves_out_the_unused_masked_lm_head(in_trained_project):
    set_params(in_trained_project, compress_params(sparsities=[0.0], bits=[8]))
    compress.main(["glue", "T1", "sst2"])
    found = variants(Path("models/compressed/T1-sst2"))
    source = load_checkpoint(Path("models/finetune/T1-sst2/checkpoint.pt"))["model"]
    assert found["s0.00-fp32"]["parameters"] == sum(v.numel() for k, v in source.items() if
                                                    ".lm_head." not in k and not k.endswith("version"))
    assert found["s0.00-fp32"]["bytes"] == 4 * found["s0.00-fp32"]["parameters"]


@pytest.mark.parametrize("edit, message", [
    (compress_params(sparsities=[0.0, 1.0]), "compress: sparsities.1: sparsity 1.0 is outside [0, 1)"),
    (compress_params(bits=[4, 17]), "compress: bits.1: 17 is outside 2..16"),
    (compress_params(onnx_sparsities=[0.3]), "onnx_sparsities: [0.3] not in sparsities"),
])
def test_invalid_params_fail_before_any_work_naming_the_key(in_trained_project, edit, message):
    set_params(in_trained_project, edit)
    with pytest.raises(StageError) as e:
        compress.main(["glue", "T1", "sst2"])
    assert message in str(e.value)
    set_params(in_trained_project, compress_params())


def test_unknown_size_is_refused(in_trained_project):
    set_params(in_trained_project, compress_params())
    with pytest.raises(StageError) as e:
        compress.main(["glue", "L99", "sst2"])
    assert "SIZE one of pretrain.sizes ['T1', 'T2']" in str(e.value)


def test_zips_waiting_in_memory_are_at_most_two_sparsities_worth(in_trained_project, monkeypatch):
    """Each queued zip holds its variant's packed weights: when zipping is slower than pruning (the paper's
    translator), a sparsity waits for the previous one's zips instead of queueing all 40 variants (which grew
    past 24 GB there). Here zipping is made slow, and the zips queued at any time are counted."""
    import threading
    import time
    set_params(in_trained_project, compress_params(sparsities=[0.0, 0.3, 0.5, 0.7, 0.9], bits=[4, 8]))
    original, lock, state = compress.zip_bytes, threading.Lock(), {"queued": 0, "most": 0}
    submit = compress.ThreadPoolExecutor.submit

    def counted_submit(self, fn, *args):
        if fn is not slow_zip:
            return submit(self, fn, *args)
        with lock:
            state["queued"] += 1
            state["most"] = max(state["most"], state["queued"])
        return submit(self, fn, *args)

    def slow_zip(tensors):
        time.sleep(0.3)
        with lock:
            state["queued"] -= 1
        return original(tensors)

    monkeypatch.setattr(compress, "zip_bytes", slow_zip)
    monkeypatch.setattr(compress.ThreadPoolExecutor, "submit", counted_submit)
    compress.main(["glue", "T2", "sst2"])
    assert len(variants(Path("models/compressed/T2-sst2"))) == 15
    per_sparsity = 3  # fp32, q4 and q8 (and the dense weights' zip once, with the first)
    assert per_sparsity < state["most"] <= 2 * per_sparsity + 1, state
