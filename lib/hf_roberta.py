"""Fine-tuned fairseq RoBERTa classifiers as transformers models, and as ONNX Runtime deployment models.

fairseq's `roberta` architecture is exactly transformers' (XLM-)RoBERTa: post-norm layers, a layer norm
on the embeddings, learned positions offset by padding_idx 1, exact gelu, layer-norm eps 1e-5, and a
dense-tanh-dense head on <s>. The weight mapping is that of transformers' RoBERTa conversion script
(convert_roberta_original_pytorch_checkpoint_to_pytorch.py), applied to the state dict (which may hold
pruned weights) instead of a fairseq hub object.

The tokenizer is XLM-R's sentencepiece tokenizer on our spm model: our fairseq dict.txt lists the spm
pieces without <unk>, <s>, </s> (spm ids 0-2) after fairseq's <s> <pad> </s> <unk>, so a piece's fairseq
id is its spm id + 1, XLM-R's fairseq_offset, and the task's trailing <mask> is XLM-R's mask id too.
Inputs are laid out as sentence_prediction does (--init-token 0 --separator-token 2):
<s> a </s> and <s> a </s> </s> b </s>, which is XLM-R's layout, so pipelines take raw text.
"""
from pathlib import Path

import numpy as np
import torch

from lib.checkpoints import checkpoint_options
from lib.errors import StageError
from lib.inference import by_length, load_onnx
from lib.onnx_export import INT4_SCHEME, checked_int8, quantize_int4, quantize_int8, quiet

ONNX_FP32_FILE = "model.onnx"            # in fp32_dir: ORTModelForSequenceClassification.from_pretrained(fp32_dir)
ONNX_INT8_FILE = "model_quantized.onnx"  # in int8_dir: ... .from_pretrained(int8_dir, file_name=ONNX_INT8_FILE)
ONNX_INT4_FILE = "model_int4.onnx"       # in int4_dir, likewise

ENCODER = "encoder.sentence_encoder."
# fairseq layer module -> transformers layer module (weight and bias alike)
LAYER_MODULES = {"self_attn.q_proj": "attention.self.query", "self_attn.k_proj": "attention.self.key",
                 "self_attn.v_proj": "attention.self.value", "self_attn.out_proj": "attention.output.dense",
                 "self_attn_layer_norm": "attention.output.LayerNorm", "fc1": "intermediate.dense",
                 "fc2": "output.dense", "final_layer_norm": "output.LayerNorm"}
# fairseq's gelu is torch's exact (erf) gelu, transformers' "gelu"; its gelu_accurate is the tanh form
ACTIVATIONS = {"gelu": "gelu", "gelu_accurate": "gelu_new", "relu": "relu"}
# fairseq options whose other values build a model transformers' RoBERTa cannot express
REQUIRED = {"encoder_normalize_before": False, "layernorm_embedding": True, "no_scale_embedding": True,
            "encoder_learned_pos": True, "no_token_positional_embeddings": False, "pooler_activation_fn": "tanh",
            "adaptive_input": False, "spectral_norm_classification_head": False}


def save_transformers_classifier(checkpoint: dict, spm_model: Path, labels: list[str] | str, out: Path,
                                 label_names: dict | None = None, label_dict: Path | None = None) -> None:
    """Write `checkpoint` (a fairseq sentence_prediction RoBERTa, as lib.load_checkpoint returns it) to `out`
    as an XLMRobertaForSequenceClassification with its tokenizer. `labels`: the task's class names in any
    order (meta.json's labels), or "regression" for a one-output regression head. The head's output i is
    entry i of fairseq's label dictionary, `label_dict` (default: label/dict.txt in the task's data dir),
    which fairseq-preprocess sorts by frequency, so it is read rather than assumed to follow `labels`.
    `label_names`: the catalog's label -> name (datasets.<task>.label_names), which config.id2label and label2id
    then hold (so a transformers pipeline answers "positive", not "1"); a label without one names itself."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaTokenizerFast

    opts, head = check_classifier(checkpoint)
    state = {k: v.float() for k, v in checkpoint["model"].items() if v.is_floating_point()}  # fp16 runs too
    vocab, hidden = state[ENCODER + "embed_tokens.weight"].shape
    num_outputs = state[f"{head}.out_proj.weight"].shape[0]
    regression = labels == "regression"
    if regression:
        if num_outputs != 1:
            raise StageError(f"labels is 'regression' but the classification head has {num_outputs} outputs")
        names = ["score"]
    else:
        label_dict = Path(label_dict or Path(checkpoint_options(checkpoint)[1]["data"]) / "label" / "dict.txt")
        if not label_dict.exists():
            raise StageError(f"{label_dict}: not found; fairseq's label dictionary gives the order of the classes")
        names = [line.rsplit(" ", 1)[0] for line in label_dict.read_text().splitlines()][:num_outputs]
        if sorted(names) != sorted(labels):
            raise StageError(f"{label_dict}: the classification head's {num_outputs} classes are {names}, "
                             f"not the labels {labels}")
        names = [(label_names or {}).get(n, n) for n in names]
    layers = opts["encoder_layers"]
    config = XLMRobertaConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=opts["encoder_attention_heads"], intermediate_size=opts["encoder_ffn_embed_dim"],
        hidden_act=ACTIVATIONS[opts.get("activation_fn", "gelu")],
        hidden_dropout_prob=opts.get("dropout", 0.1), attention_probs_dropout_prob=opts.get("attention_dropout", 0.1),
        classifier_dropout=opts.get("pooler_dropout", 0.0),
        # fairseq's learned positions have padding_idx + 1 extra rows: max_positions + 2
        max_position_embeddings=state[ENCODER + "embed_positions.weight"].shape[0],
        type_vocab_size=1, layer_norm_eps=1e-5,  # fairseq LayerNorm's default eps
        pad_token_id=1, bos_token_id=0, eos_token_id=2,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
        problem_type="regression" if regression else "single_label_classification")

    hf = {"roberta.embeddings.word_embeddings.weight": state[ENCODER + "embed_tokens.weight"],
          "roberta.embeddings.position_embeddings.weight": state[ENCODER + "embed_positions.weight"],
          # fairseq has no segment embeddings: one all-zero type, so adding it changes nothing
          "roberta.embeddings.token_type_embeddings.weight": torch.zeros(1, hidden)}
    for p in ("weight", "bias"):
        hf[f"roberta.embeddings.LayerNorm.{p}"] = state[f"{ENCODER}layernorm_embedding.{p}"]
        for i in range(layers):
            for theirs, ours in LAYER_MODULES.items():
                hf[f"roberta.encoder.layer.{i}.{ours}.{p}"] = state[f"{ENCODER}layers.{i}.{theirs}.{p}"]
        for module in ("dense", "out_proj"):
            hf[f"classifier.{module}.{p}"] = state[f"{head}.{module}.{p}"]
    model = XLMRobertaForSequenceClassification(config)
    model.load_state_dict(hf, strict=True)  # strict: every transformers weight comes from the checkpoint
    model.save_pretrained(out)

    # the fast tokenizer (tokenizer.json) is what pipelines load; the spm file is saved beside it as well
    tokenizer = XLMRobertaTokenizerFast(vocab_file=str(spm_model), model_max_length=opts["max_positions"])
    if tokenizer.mask_token_id >= vocab:
        raise StageError(f"{spm_model} has {len(tokenizer)} pieces with XLM-R's specials, more than the "
                         f"model's {vocab} embeddings: not the sentencepiece model this model was trained with")
    tokenizer.save_pretrained(out)


def check_classifier(checkpoint: dict) -> tuple[dict, str]:
    """The model options of a convertible sentence_prediction RoBERTa checkpoint and the state-dict prefix
    of its classification head; StageError for anything else."""
    opts, task, arch, task_name = checkpoint_options(checkpoint)
    if task_name != "sentence_prediction" or not str(arch).startswith("roberta"):
        raise StageError(f"the checkpoint is a fairseq {task_name!r} model with arch {arch!r}; converting to "
                         "transformers needs a RoBERTa fine-tuned with --task sentence_prediction --arch roberta")
    heads = sorted({k.split(".")[1] for k in checkpoint["model"] if k.startswith("classification_heads.")})
    name = task.get("classification_head_name", opts.get("classification_head_name"))
    if name not in heads:
        raise StageError(f"the checkpoint has no classification head {name!r} (heads: {heads})")
    for key, needed in REQUIRED.items():
        if opts.get(key, needed) != needed:
            raise StageError(f"the checkpoint's model has {key}={opts[key]!r}; transformers' RoBERTa needs {needed!r}")
    if opts.get("activation_fn", "gelu") not in ACTIVATIONS:
        raise StageError(f"activation_fn {opts['activation_fn']!r} has no transformers equivalent here")
    # fairseq fills these in at build time (base_architecture) when a checkpoint leaves them out
    opts = {"encoder_layers": 12, "encoder_attention_heads": 12, "encoder_ffn_embed_dim": 3072, **opts}
    opts.setdefault("max_positions", task.get("max_positions", 512))
    return opts, f"classification_heads.{name}"


def export_onnx_classifier(hf_dir: Path, fp32_dir: Path, int8_dir: Path, int4_dir: Path, check_texts: list[tuple],
                           min_agreement: float, flags: list[str] | None = None) -> dict:
    """The transformers classifier in `hf_dir` as ONNX fp32 (fp32_dir/ONNX_FP32_FILE), ONNX Runtime dynamic
    int8 (int8_dir/ONNX_INT8_FILE) and 4-bit (int4_dir/ONNX_INT4_FILE), each directory with the config and
    tokenizer, so ORTModelForSequenceClassification.from_pretrained(dir, file_name=...) and a pipeline take
    raw text. The int8 scheme follows the CPU (`flags`, default this one's: lib.onnx_export.checked_int8),
    checked on `check_texts` (tuples of one or two texts, e.g. dev examples); returns the int8 and int4
    models' agreement with fp32 there: the same predicted class (the output's correlation for regression)."""
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    with quiet():
        model = ORTModelForSequenceClassification.from_pretrained(hf_dir, export=True)
        model.save_pretrained(fp32_dir)
        tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        for directory in (fp32_dir, int4_dir):
            tokenizer.save_pretrained(directory)
        model.config.save_pretrained(int4_dir)
        reference = classifier_outputs(fp32_dir, check_texts)
        # writes int8_dir/ONNX_INT8_FILE (model + "_quantized"), ort_config.json (the settings), config, tokenizer
        int8 = checked_int8(lambda scheme: quantize_int8(fp32_dir, ONNX_FP32_FILE, int8_dir, scheme),
                            lambda: output_agreement(reference, classifier_outputs(int8_dir, check_texts)),
                            min_agreement, flags)
        quantize_int4(fp32_dir, ONNX_FP32_FILE, int4_dir, ONNX_INT4_FILE)
        int4 = {"scheme": INT4_SCHEME, "agreement": round(output_agreement(reference, classifier_outputs(int4_dir, check_texts)), 4)}
    measure = "output correlation" if reference.shape[1] == 1 else "same predicted class"
    checked = f"{len(check_texts)} examples, {measure}"
    return {"int8": {**int8, "checked_on": checked}, "int4": {**int4, "checked_on": checked}}


def classifier_outputs(model_dir: Path, texts: list[tuple]) -> np.ndarray:
    """The logits of the ONNX classifier in `model_dir` (its one .onnx file) for `texts`, in batches of 32."""
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer
    model = load_onnx(ORTModelForSequenceClassification, Path(model_dir), threads=torch.get_num_threads())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def run(batch):
        encoded = tokenizer(*[list(c) for c in zip(*batch)], padding=True, truncation=True, return_tensors="np")
        return np.asarray(model(**encoded).logits)
    return np.stack(by_length(run, texts, lambda text: sum(map(len, text)), 32))


def output_agreement(reference: np.ndarray, outputs: np.ndarray) -> float:
    """The share of examples with fp32's predicted class, or for one regression output their correlation."""
    if reference.shape[1] == 1:
        return float(np.corrcoef(reference[:, 0], outputs[:, 0])[0, 1])
    return float(np.mean(reference.argmax(1) == outputs.argmax(1)))
