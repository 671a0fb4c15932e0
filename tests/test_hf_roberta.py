"""fairseq RoBERTa classifiers converted to transformers and exported to ONNX: same logits as fairseq,
same token ids from raw text, and an int8 model that agrees with fp32."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import pruned
import torch

from lib.checkpoints import allow_checkpoint_globals, load_checkpoint
from lib.errors import StageError
from lib.hf_roberta import (ONNX_FP32_FILE, ONNX_INT4_FILE, ONNX_INT8_FILE, export_onnx_classifier,
                            save_transformers_classifier)

SPM = Path("data/bin/mlm/spm.model")
SST2 = Path("data/bin/glue/sst2")
HEAD = "sentence_classification_head"


def read_tsv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def fairseq_model(path: Path, model_state: dict | None = None):
    """The fairseq model and task of a checkpoint as fairseq itself loads them (optionally with other weights)."""
    from fairseq import checkpoint_utils
    allow_checkpoint_globals()
    state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    if model_state is not None:
        state["model"] = model_state
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], state=state)
    return models[0].eval(), task


def fairseq_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens, features_only=True, classification_head_name=HEAD)[0]


def hf_logits(hf_dir: Path, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        return model(input_ids=tokens, attention_mask=tokens.ne(1)).logits


def check_texts(n=64) -> list[tuple]:
    """The first n SST-2 dev sentences: the int8 check set."""
    return [(r["sentence1"],) for r in read_tsv(SST2 / "dev.tsv")[:n]]


def export(hf_dir: Path, out: Path, flags=None, min_agreement=0.9) -> dict:
    """export_onnx_classifier into out/fp32, out/int8 and out/int4; what it says of the quantized models."""
    return export_onnx_classifier(hf_dir, out / "fp32", out / "int8", out / "int4", check_texts(), min_agreement, flags)


def dev_batch(task, n=16) -> torch.Tensor:
    """Token ids of the first n SST-2 dev sentences from fairseq's binarized data: <s> a </s> <pad>..."""
    task.load_dataset("valid")
    dataset = task.datasets["valid"]
    return dataset.collater([dataset[i] for i in range(n)])["net_input"]["src_tokens"]


@pytest.fixture(scope="module")
def t1(trained_project, tmp_path_factory):
    """T1-sst2 converted to transformers and exported to ONNX fp32, int8 (this CPU's scheme) and int4, in a
    scratch directory; out/checked.json: what the export said of the quantized models."""
    out = tmp_path_factory.mktemp("hf_roberta")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(trained_project)
        checkpoint = load_checkpoint(Path("models/finetune/T1-sst2/checkpoint.pt"))
        labels = json.loads((SST2 / "meta.json").read_text())["labels"]
        save_transformers_classifier(checkpoint, SPM, labels, out / "hf")
        (out / "checked.json").write_text(json.dumps(export(out / "hf", out)))
    return out


def test_transformers_logits_and_token_ids_match_fairseq(in_trained_project, t1):
    from transformers import AutoTokenizer, XLMRobertaTokenizer
    model, task = fairseq_model(Path("models/finetune/T1-sst2/checkpoint.pt"))
    tokens = dev_batch(task)
    reference = fairseq_logits(model, tokens)
    assert (hf_logits(t1 / "hf", tokens) - reference).abs().max() < 1e-4

    # raw text through the saved tokenizers (the fast one pipelines load, and the slow one) gives fairseq's
    # ids; past max_positions fairseq cuts the final </s> off, transformers keeps it
    texts = [r["sentence1"] for r in read_tsv(SST2 / "dev.tsv")][:len(tokens)]
    expected = [[t for t in row.tolist() if t != 1] for row in tokens]
    expected = [ids if ids[-1] == 2 else ids[:-1] + [2] for ids in expected]
    assert 0 < sum(len(ids) == tokens.shape[1] for ids in expected) < len(texts)  # both kinds tested
    for tokenizer in (AutoTokenizer.from_pretrained(t1 / "hf"), XLMRobertaTokenizer.from_pretrained(t1 / "hf")):
        assert tokenizer(texts, truncation=True)["input_ids"] == expected
    # output i of the head is class i of fairseq's label dictionary (sorted by frequency, not meta.json's order)
    config = json.loads((t1 / "hf" / "config.json").read_text())
    label_dict = [line.split()[0] for line in (SST2 / "label" / "dict.txt").read_text().splitlines()]
    assert [config["id2label"][str(i)] for i in range(2)] == label_dict[:2]


def test_sentence_pairs_match_fairseq(in_trained_project, tmp_path):
    """<s> a </s> </s> b </s>, as sentence_prediction builds pairs (the conversion itself does not depend on
    the task, so T2 fine-tuned on SST-2 serves)."""
    import sentencepiece as spm
    from transformers import AutoTokenizer
    path = Path("models/finetune/T2-sst2/checkpoint.pt")
    save_transformers_classifier(load_checkpoint(path), SPM, ["0", "1"], tmp_path)
    model, task = fairseq_model(path)
    sp, dictionary = spm.SentencePieceProcessor(model_file=str(SPM)), task.source_dictionary
    # RTE's sentences, shortened so that a pair fits in the tiny models' 32 positions
    rows = [{k: " ".join(v.split()[:3]) for k, v in r.items()} for r in read_tsv(Path("data/bin/glue/rte/dev.tsv"))[:8]]

    def ids(text):  # as prepare_glue + fairseq-preprocess binarize a sentence: pieces, then </s>
        return dictionary.encode_line(" ".join(sp.encode(text, out_type=str)), add_if_not_exist=False).long()
    pairs = [torch.cat([torch.tensor([0]), ids(r["sentence1"]), torch.tensor([2]), ids(r["sentence2"])]) for r in rows]
    tokens = torch.nn.utils.rnn.pad_sequence(pairs, batch_first=True, padding_value=dictionary.pad())
    assert tokens.shape[1] <= model.max_positions()
    assert (hf_logits(tmp_path, tokens) - fairseq_logits(model, tokens)).abs().max() < 1e-4
    encoded = AutoTokenizer.from_pretrained(tmp_path)([r["sentence1"] for r in rows], [r["sentence2"] for r in rows])
    assert encoded["input_ids"] == [p.tolist() for p in pairs]


def test_pruned_checkpoint_converts_exports_and_matches(in_trained_project, tmp_path):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    path = Path("models/finetune/T1-sst2/checkpoint.pt")
    checkpoint = load_checkpoint(path)
    checkpoint["model"] = pruned(checkpoint["model"])
    assert checkpoint["model"]["encoder.sentence_encoder.layers.0.fc1.weight"].eq(0).float().mean() >= 0.5
    save_transformers_classifier(checkpoint, SPM, ["0", "1"], tmp_path / "hf")
    model, task = fairseq_model(path, checkpoint["model"])
    tokens = dev_batch(task)
    converted = hf_logits(tmp_path / "hf", tokens)
    assert (converted - fairseq_logits(model, tokens)).abs().max() < 1e-4

    export(tmp_path / "hf", tmp_path)
    onnx = ORTModelForSequenceClassification.from_pretrained(tmp_path / "fp32", file_name=ONNX_FP32_FILE)
    logits = onnx(input_ids=tokens, attention_mask=tokens.ne(1).long()).logits
    assert (logits - converted).abs().max() < 1e-4
    assert (tmp_path / "int8" / ONNX_INT8_FILE).exists()


def test_onnx_fp32_matches_and_int8_and_int4_agree_on_raw_text(in_trained_project, t1):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline
    formats = {"fp32": ONNX_FP32_FILE, "int8": ONNX_INT8_FILE, "int4": ONNX_INT4_FILE}
    for name, file_name in formats.items():
        assert sorted(p.name for p in (t1 / name).glob("*.onnx")) == [file_name]
    rows = read_tsv(SST2 / "dev.tsv")
    texts, gold = [r["sentence1"] for r in rows], [r["label"] for r in rows]

    tokenizer = AutoTokenizer.from_pretrained(t1 / "fp32")
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    fp32 = ORTModelForSequenceClassification.from_pretrained(t1 / "fp32", file_name=ONNX_FP32_FILE)
    assert (fp32(**batch).logits - hf_logits(t1 / "hf", batch["input_ids"])).abs().max() < 1e-4

    predictions = {}
    for name, file_name in formats.items():  # each loads through optimum and runs in a pipeline on raw text
        model = ORTModelForSequenceClassification.from_pretrained(t1 / name, file_name=file_name)
        classify = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(t1 / name))
        predictions[name] = [p["label"] for p in classify(texts, truncation=True)]
    # T1 learned the separable task: raw text in, the task's label names out
    assert np.mean([p == g for p, g in zip(predictions["fp32"], gold)]) >= 0.9
    for name in ("int8", "int4"):
        assert np.mean([a == b for a, b in zip(predictions["fp32"], predictions[name])]) >= 0.9, name

    import collections
    import onnx
    from lib.onnx_export import activation_matmuls
    ops = {fmt: collections.Counter(n.op_type for n in onnx.load(str(t1 / fmt / f)).graph.node)
           for fmt, f in formats.items()}
    # every MatMul with a constant weight and the classifier head's two Gemms are quantized, in both;
    # attention's activation x activation MatMuls stay fp32 (int8: lib.onnx_export.activation_matmuls); int4
    # also stores the embeddings in 4 bits (its Gemms become MatMul + Add first: lib.onnx_export.gemms_as_matmuls)
    attention = len(activation_matmuls(t1 / "fp32" / ONNX_FP32_FILE))
    assert 0 < attention < ops["fp32"]["MatMul"] and ops["fp32"]["Gemm"] == 2
    assert ops["int4"]["MatMul"] == ops["int8"]["MatMul"] == attention and ops["int4"]["Gemm"] == 0
    assert ops["int4"]["MatMulNBits"] == ops["fp32"]["MatMul"] - attention + ops["fp32"]["Gemm"]
    assert ops["int4"]["GatherBlockQuantized"]
    assert ops["int8"]["DynamicQuantizeMatMul"] + ops["int8"]["MatMulInteger"] + ops["int8"]["MatMulIntegerToFloat"] \
        == ops["fp32"]["MatMul"] - attention + ops["fp32"]["Gemm"]
    # 4 bits a weight, the embeddings too: several times smaller than fp32
    sizes = {fmt: (t1 / fmt / f).stat().st_size for fmt, f in formats.items()}
    # (T1's fp32 positions, norms and biases weigh as much as its matrices: bench measures the default sizes)
    assert sizes["int4"] < sizes["int8"] < sizes["fp32"]

    checked = json.loads((t1 / "checked.json").read_text())
    assert checked["int8"]["agreement"] >= 0.9 and checked["int4"]["agreement"] >= 0.9
    assert checked["int8"]["checked_on"].endswith("examples, same predicted class")  # the tiny dev set: under 64


@pytest.mark.parametrize("flags, scheme", [(["avx2", "avx512f", "avx512_vnni"], "u8s8"),
                                           (["avx2"], "u8s8-reduce-range"), ([], "u8u8")])
def test_int8_scheme_follows_the_cpu_and_each_agrees_with_fp32(in_trained_project, t1, tmp_path, flags, scheme):
    """Each branch of the choice, whatever this CPU is: the flags are injected, the model is real."""
    checked = export(t1 / "hf", tmp_path, flags=flags)["int8"]
    assert checked["scheme"] == scheme and checked["isa"] == flags and checked["tried"] == {scheme: checked["agreement"]}
    assert checked["agreement"] >= 0.9
    settings = json.loads((tmp_path / "int8" / "ort_config.json").read_text())["quantization"]
    assert settings["weights_dtype"] == ("QUInt8" if scheme == "u8u8" else "QInt8")
    assert settings["reduce_range"] == (scheme == "u8s8-reduce-range") and settings["per_channel"]


def test_regression_head_has_one_unnamed_output(in_trained_project, t1, tmp_path):
    """A regression task (STS-B) has a one-output head and no label dictionary: here, T1's first output."""
    checkpoint = load_checkpoint(Path("models/finetune/T1-sst2/checkpoint.pt"))
    for p in ("weight", "bias"):
        key = f"classification_heads.{HEAD}.out_proj.{p}"
        checkpoint["model"][key] = checkpoint["model"][key][:1]
    save_transformers_classifier(checkpoint, SPM, "regression", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["problem_type"] == "regression" and config["id2label"] == {"0": "score"}
    tokens = torch.tensor([[0, 5, 6, 7, 2]])
    assert torch.equal(hf_logits(tmp_path, tokens), hf_logits(t1 / "hf", tokens)[:, :1])


def test_non_classifier_checkpoints_are_refused_clearly(in_trained_project, tmp_path):
    with pytest.raises(StageError, match="'masked_lm' model.*sentence_prediction"):
        save_transformers_classifier(load_checkpoint(Path("models/pretrain/T1/checkpoint.pt")), SPM, ["0", "1"],
                                     tmp_path)
    with pytest.raises(StageError, match="classes are .* not the labels"):
        save_transformers_classifier(load_checkpoint(Path("models/finetune/T1-sst2/checkpoint.pt")), SPM,
                                     ["negative", "positive"], tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written before the error
