"""Recovery fine-tuning after pruning (compress.recovery): the pruned weights stay exactly zero, the
rest of the model trains, and the recovered model fits its task better than the pruned one."""
import csv
import json
from pathlib import Path

import torch

from conftest import set_params
from stages import compress, evaluate
from stages.compress import LAYER_MATRIX
from lib.checkpoints import load_checkpoint
from lib.harness import WORK_DIR
from lib.variant_weights import load_variant


def configure(recovery_updates=None, sparsities=(0.0, 0.99), onnx=()):
    def edit(p):
        p["compress"] = {"sparsities": list(sparsities), "pruning": "global", "bits": [8], "granularity": "channel",
                         "onnx_sparsities": list(onnx), "int8_min_agreement": 0.9, "int8_check_examples": 32,
                         "recovery": {"seconds": None, "updates": recovery_updates}}
        p["evaluate"].update(threads=1, repeats=1, latency_examples=2, batch_size=8, bootstrap=50, beam=2,
                             max_test_sentences=8)
    return edit


def dev_loss(variant: str) -> float:
    with open("reports/eval/T1-sst2.csv") as f:
        return next(float(r["value"]) for r in csv.DictReader(f) if r["variant"] == variant and r["metric"] == "loss")


def test_recovery_keeps_the_mask_and_recovers_the_pruned_classifier(in_trained_project):
    set_params(in_trained_project, configure())
    compress.main(["glue", "T1", "sst2"])
    evaluate.main(["glue", "T1", "sst2"])
    pruned_loss = dev_loss("s0.99-fp32")
    pruned_sparsity = json.loads(Path("models/compressed/T1-sst2/s0.99-fp32/variant.json").read_text())["sparsity"]

    set_params(in_trained_project, configure(recovery_updates=80, onnx=[0.99]))
    compress.main(["glue", "T1", "sst2"])
    out = Path("models/compressed/T1-sst2")
    described = json.loads((out / "s0.99-q8" / "variant.json").read_text())
    assert described["recovery"]["updates"] == 80 and described["sparsity"] == pruned_sparsity  # the mask held
    assert described["source"] == str(out / "recovered" / "s0.99" / "checkpoint.pt")
    assert json.loads((out / "s0.00-fp32" / "variant.json").read_text())["recovery"] is None  # nothing pruned
    assert (out / "recovered" / "s0.99" / "curve.csv").exists()
    assert not (WORK_DIR / "compress" / "T1-sst2").exists()  # scratch removed once the stage succeeded

    source = load_checkpoint(Path("models/finetune/T1-sst2/checkpoint.pt"))["model"]
    recovered = load_variant(out / "s0.99-fp32")["model"]
    head = "classification_heads.sentence_classification_head.out_proj.weight"
    assert not torch.equal(recovered[head], source[head])  # the dense parts trained
    pruned = compress.prune({k: v for k, v in source.items() if LAYER_MATRIX.search(k)}, 0.99, "global")
    for k, w in pruned.items():
        assert torch.all(recovered[k][w == 0] == 0), k  # exactly the pruned weights are still zero

    evaluate.main(["glue", "T1", "sst2"])
    assert dev_loss("s0.99-fp32") < pruned_loss
    assert dev_loss("onnx-s0.99-fp32") < pruned_loss  # the deployment model is the recovered one


def test_translation_recovery_trains_from_the_pruned_model(in_trained_project):
    set_params(in_trained_project, configure(recovery_updates=4, sparsities=(0.5,)))
    compress.main(["mt", "T1"])
    out = Path("models/compressed/mt-T1")
    described = json.loads((out / "s0.50-fp32" / "variant.json").read_text())
    assert described["recovery"]["updates"] == 4 and abs(described["sparsity"] - 0.5) < 1e-3
    state = load_variant(out / "s0.50-q8")["model"]
    assert any(".encoder_attn." in k for k in state if LAYER_MATRIX.search(k))
