"""fairseq pre-norm translation Transformers as transformers M2M100 models, and as ONNX Runtime deployment models.

fairseq's `transformer` with --encoder/decoder-normalize-before and --share-all-embeddings is exactly
transformers' M2M100ForConditionalGeneration: pre-norm layers with a final layer norm on each side,
token embeddings scaled by sqrt(d_model), fairseq's sinusoidal positions (sin then cos, positions start
at padding_idx + 1 = 2, pad positions get the zero row), no embedding layer norm, q scaled by
head_dim**-0.5, layer-norm eps 1e-5, and the output projection tied to the shared embeddings. Even the
module names match (self_attn.q_proj, encoder_attn_layer_norm, fc1, final_layer_norm...), so the
conversion is transformers' convert_m2m100_original_checkpoint_to_pytorch.py done on the state dict
(which may hold pruned weights), with strict loading instead of strict=False.

Ids: our fairseq dict lists the sentencepiece pieces without spm's <unk> <s> </s> (spm ids 0-2) after
fairseq's <s>=0 <pad>=1 </s>=2 <unk>=3, so a piece's fairseq id is its spm id + 1. A source is its
pieces then </s> (no <s>); fairseq starts decoding from </s>, so decoder_start_token_id is 2.
The saved tokenizer (tokenizer.json, XLM-R's sentencepiece tokenizer on our spm model, which has that
same +1 offset, with the template "$A </s>") takes raw text; `encode` and `decode` below do the same
with the spm model alone, which is saved beside it as SPM_FILE.

    tok = AutoTokenizer.from_pretrained(d)
    model = M2M100ForConditionalGeneration.from_pretrained(d)   # or ORTModelForSeq2SeqLM, see below
    batch = tok(lines, return_tensors="pt", padding=True)
    tok.batch_decode(model.generate(**batch, num_beams=4), skip_special_tokens=True)
"""
import shutil
from pathlib import Path

import torch

from lib.checkpoints import checkpoint_options
from lib.errors import StageError
from lib.inference import load_onnx
from lib.onnx_export import INT4_SCHEME, checked_int8, quantize_int4, quantize_int8, quiet

SPM_FILE = "spm.model"  # the sentencepiece model, in every output directory
# optimum's export (encoder, decoder without and with past key values), in fp32_dir
ONNX_FP32_FILES = ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx")
# the int8 and int4 models keep those names in their own directories: optimum's standard names, which
# ORTModelForSeq2SeqLM.from_pretrained(dir, use_merged=False) finds without a warning (use_merged=False: no
# merged decoder is looked for; other names make optimum warn four times that it found no standard file)
ONNX_INT8_FILES = ONNX_INT4_FILES = ONNX_FP32_FILES

BOS, PAD, EOS, UNK = 0, 1, 2, 3  # fairseq's Dictionary
FAIRSEQ_GENERATE_BEAM, FAIRSEQ_GENERATE_MAX_LEN = 5, 200  # fairseq-generate's --beam, --max-len-b (--max-len-a 0)
# fairseq activation_fn -> transformers ACT2FN name (fairseq's gelu is the exact erf form)
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_accurate": "gelu_new", "tanh": "tanh", "linear": "linear"}
# fairseq options that change the computation without changing the state dict's keys, with the value
# M2M100 computes; the defaults are fairseq's base_architecture's, for checkpoints that leave one out.
# (Options that add or drop weights, such as learned positions or NormFormer scales, are caught by the
# state dict's keys not mapping one to one.)
REQUIRED = {"encoder_normalize_before": (True, False), "decoder_normalize_before": (True, False),
            "share_all_embeddings": (True, False), "no_scale_embedding": (False, False),
            "no_token_positional_embeddings": (False, False), "cross_self_attention": (False, False),
            "no_decoder_final_norm": (False, False), "layernorm_embedding": (False, False),
            "encoder_learned_pos": (False, False), "decoder_learned_pos": (False, False),
            "adaptive_input": (False, False), "adaptive_softmax_cutoff": (None, None)}


def save_transformers_translator(checkpoint: dict, out: Path, spm_model: Path | None = None) -> None:
    """Write `checkpoint` (a fairseq translation transformer, as lib.load_checkpoint returns it) to `out` as an
    M2M100ForConditionalGeneration with its generation config, tokenizer and spm model (default: spm.model
    in the checkpoint's data directory, which must hold the dictionary it was trained with)."""
    from transformers import GenerationConfig, M2M100Config, M2M100ForConditionalGeneration

    opts, task = check_translator(checkpoint)
    spm_model = Path(spm_model or Path(task["data"]) / "spm.model")
    state = {k: v.float() for k, v in checkpoint["model"].items() if v.is_floating_point()}  # fp16 runs too
    shared = state.pop("encoder.embed_tokens.weight")
    for tied in ("decoder.embed_tokens.weight", "decoder.output_projection.weight"):
        if tied in state and not torch.equal(state.pop(tied), shared):
            raise StageError(f"the checkpoint's {tied} differs from encoder.embed_tokens.weight: "
                             "its embeddings are not shared, as M2M100 needs")
    hf = {f"model.{k}": v for k, v in state.items() if not k.endswith(".version")}  # same module names
    for name in ("model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
                 "lm_head.weight"):
        hf[name] = shared
    vocab, hidden = shared.shape
    check_dictionary(spm_model, Path(task["data"]) / f"dict.{task.get('source_lang')}.txt", vocab)
    config = M2M100Config(
        vocab_size=vocab, d_model=hidden, scale_embedding=True,
        encoder_layers=opts["encoder_layers"], decoder_layers=opts["decoder_layers"],
        encoder_ffn_dim=opts["encoder_ffn_embed_dim"], decoder_ffn_dim=opts["decoder_ffn_embed_dim"],
        encoder_attention_heads=opts["encoder_attention_heads"],
        decoder_attention_heads=opts["decoder_attention_heads"],
        activation_function=ACTIVATIONS[opts.get("activation_fn", "relu")],
        # sinusoidal positions are computed, not stored; this only sizes the precomputed table
        max_position_embeddings=max(opts.get("max_source_positions", 1024), opts.get("max_target_positions", 1024)),
        dropout=opts.get("dropout", 0.1), attention_dropout=opts.get("attention_dropout", 0.0),
        activation_dropout=opts.get("activation_dropout", 0.0),
        encoder_layerdrop=opts.get("encoder_layerdrop", 0.0), decoder_layerdrop=opts.get("decoder_layerdrop", 0.0),
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=EOS, tie_word_embeddings=True)
    model = M2M100ForConditionalGeneration(config)
    missing, unexpected = set(model.state_dict()) - set(hf), set(hf) - set(model.state_dict())
    if unexpected or missing:
        raise StageError("the checkpoint is not a plain pre-norm fairseq transformer: weights M2M100 lacks: "
                         f"{sorted(k[len('model.'):] for k in unexpected)[:6]}; M2M100 weights missing: "
                         f"{sorted(missing)[:6]}")
    model.load_state_dict(hf, strict=True)
    # fairseq-generate's search: starts from </s>, never emits <pad>, no </s> as the first token
    # (--min-len 1), stops once num_beams hypotheses end (early_stopping=True), scores / length
    # (length_penalty 1, the length counting </s>), and ends a hypothesis that reaches the maximum
    # length with </s>: fairseq's max length n is max_length n + 2 (the start token, n tokens, </s>)
    model.generation_config = GenerationConfig(
        bos_token_id=BOS, pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=EOS,
        suppress_tokens=[PAD], min_new_tokens=1, num_beams=FAIRSEQ_GENERATE_BEAM, early_stopping=True,
        length_penalty=1.0, max_length=FAIRSEQ_GENERATE_MAX_LEN + 2, forced_eos_token_id=EOS)
    model.save_pretrained(out)

    shutil.copyfile(spm_model, Path(out) / SPM_FILE)
    translation_tokenizer(spm_model, config.max_position_embeddings).save_pretrained(out)


def check_translator(checkpoint: dict) -> tuple[dict, dict]:
    """The model and task options of a convertible translation checkpoint; StageError for anything else."""
    opts, task, arch, task_name = checkpoint_options(checkpoint)
    if task_name != "translation" or not str(arch).startswith("transformer"):
        raise StageError(f"the checkpoint is a fairseq {task_name!r} model with arch {arch!r}; converting to "
                         "M2M100 needs a translation model: --task translation --arch transformer")
    for key, (needed, default) in REQUIRED.items():
        if opts.get(key, default) != needed:
            raise StageError(f"the checkpoint's model has {key}={opts.get(key, default)!r}; M2M100 needs "
                             f"{needed!r} (a pre-norm transformer with --share-all-embeddings)")
    if opts.get("activation_fn", "relu") not in ACTIVATIONS:
        raise StageError(f"activation_fn {opts['activation_fn']!r} has no transformers equivalent here")
    # fairseq fills these in at build time (base_architecture) when a checkpoint leaves them out
    opts = {"encoder_layers": 6, "encoder_attention_heads": 8, "encoder_ffn_embed_dim": 2048, **opts}
    opts = {"decoder_layers": opts["encoder_layers"], "decoder_attention_heads": opts["encoder_attention_heads"],
            "decoder_ffn_embed_dim": opts["encoder_ffn_embed_dim"], **opts}
    return opts, task



def check_dictionary(spm_model: Path, dictionary: Path, vocab: int) -> None:
    """StageError unless fairseq id = spm id + 1 holds for this spm model and the model's dictionary."""
    import sentencepiece as spm
    if not spm_model.exists():
        raise StageError(f"{spm_model}: not found; pass the sentencepiece model the translator was trained with")
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    pieces = [sp.id_to_piece(i) for i in range(3, sp.get_piece_size())]
    if [sp.id_to_piece(i) for i in range(3)] != ["<unk>", "<s>", "</s>"] or sp.get_piece_size() + 1 > vocab:
        raise StageError(f"{spm_model}: not a model whose pieces 3.. are the translator's {vocab - 4} dictionary "
                         "entries (expected <unk> <s> </s> at spm ids 0-2)")
    if dictionary.exists():
        listed = [line.rsplit(" ", 1)[0] for line in dictionary.read_text().splitlines()]
        if listed[:len(pieces)] != pieces:
            raise StageError(f"{dictionary} does not list {spm_model}'s pieces in order: not its dictionary")


def translation_tokenizer(spm_model: Path, max_length: int):
    """A fast tokenizer giving fairseq's source ids for raw text: XLM-R's sentencepiece tokenizer (ids =
    spm ids + 1, spm's <unk> -> 3), without its trailing <mask> and with "$A </s>" instead of "<s> $A </s>"."""
    import json
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast, XLMRobertaTokenizerFast

    spec = json.loads(XLMRobertaTokenizerFast(vocab_file=str(spm_model)).backend_tokenizer.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] != "<mask>"]
    assert spec["model"]["vocab"][-1][0] == "<mask>"
    spec["model"]["vocab"].pop()
    backend = Tokenizer.from_str(json.dumps(spec))
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A $B </s>",
                                                           special_tokens=[("</s>", EOS)])
    # model_input_names: no token_type_ids, which M2M100's generate would refuse
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=max_length,
                                   model_input_names=["input_ids", "attention_mask"])


def encode(sp, lines: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask of raw `lines` for generate, with the sentencepiece processor `sp`: the
    fairseq source ids (spm id + 1, spm's <unk> as fairseq's, then </s>), padded on the right with PAD."""
    rows = [[UNK if i == sp.unk_id() else i + 1 for i in ids] + [EOS] for ids in sp.encode(lines)]
    input_ids = torch.full((len(rows), max(map(len, rows))), PAD)
    for row, ids in zip(input_ids, rows):
        row[:len(ids)] = torch.tensor(ids)
    return input_ids, (input_ids != PAD).long()


def decode(sp, ids) -> list[str]:
    """Raw text of generated fairseq ids (a batch, e.g. generate's output): specials dropped, spm id = id - 1."""
    return [sp.decode([int(i) - 1 for i in row if UNK < i <= sp.get_piece_size()]) for row in ids]


def export_onnx_translator(hf_dir: Path, fp32_dir: Path, int8_dir: Path, int4_dir: Path, check_pairs: list[tuple],
                           min_agreement: float, flags: list[str] | None = None) -> dict:
    """The M2M100 translator in `hf_dir` as ONNX fp32 (fp32_dir/ONNX_FP32_FILES), ONNX Runtime dynamic int8
    (int8_dir/ONNX_INT8_FILES) and 4-bit (int4_dir/ONNX_INT4_FILES), each directory with the configs,
    tokenizer and spm model, so that ORTModelForSeq2SeqLM.from_pretrained(dir) generates from the
    tokenizer's ids. The int8 scheme follows the CPU (`flags`, default this one's:
    lib.onnx_export.checked_int8), checked on `check_pairs` (raw source, reference translation): the share
    of reference tokens where the quantized model predicts fp32's next token, the reference before it given.
    Returns the int8 and int4 models' agreement."""
    import sentencepiece
    from optimum.onnxruntime import ORTModelForSeq2SeqLM

    fp32_dir, int8_dir, int4_dir = Path(fp32_dir), Path(int8_dir), Path(int4_dir)
    with quiet():
        # use_merged=False: separate decoder and decoder-with-past graphs (no If node to quantize through)
        model = ORTModelForSeq2SeqLM.from_pretrained(hf_dir, export=True, use_merged=False)
        model.save_pretrained(fp32_dir)
        for directory in (fp32_dir, int8_dir, int4_dir):
            directory.mkdir(parents=True, exist_ok=True)
            for f in Path(hf_dir).iterdir():  # configs, tokenizer and spm model; not the torch weights
                if f.is_file() and f.suffix in (".json", ".model"):
                    shutil.copyfile(f, directory / f.name)
        sp = sentencepiece.SentencePieceProcessor(model_file=str(fp32_dir / SPM_FILE))
        batches = teacher_forced_batches(sp, check_pairs)
        reference = next_tokens(fp32_dir, batches)

        def quantize(scheme):
            for name in ONNX_FP32_FILES:
                quantize_int8(fp32_dir, name, int8_dir, scheme, suffix=None)
        int8 = checked_int8(quantize, lambda: token_agreement(reference, next_tokens(int8_dir, batches)),
                            min_agreement, flags)
        for name, int4_name in zip(ONNX_FP32_FILES, ONNX_INT4_FILES):
            quantize_int4(fp32_dir, name, int4_dir, int4_name)
        int4 = {"scheme": INT4_SCHEME, "agreement": round(token_agreement(reference, next_tokens(int4_dir, batches)), 4)}
    missing = [f for d, names in ((fp32_dir, ONNX_FP32_FILES), (int8_dir, ONNX_INT8_FILES), (int4_dir, ONNX_INT4_FILES))
               for f in names if not (d / f).exists()]
    if missing:
        raise StageError(f"the ONNX export did not write {missing}; optimum's file names changed?")
    checked = f"{len(check_pairs)} sentence pairs, {sum(int(m.sum()) for _, _, m in batches)} reference tokens"
    return {"int8": {**int8, "checked_on": checked}, "int4": {**int4, "checked_on": checked}}


def teacher_forced_batches(sp, pairs: list[tuple], batch_size: int = 16) -> list[tuple]:
    """(source ids and mask, decoder input ids: </s> then the reference, mask of the reference positions)."""
    batches = []
    for lo in range(0, len(pairs), batch_size):
        sources, targets = zip(*pairs[lo: lo + batch_size])
        input_ids, attention_mask = encode(sp, list(sources))
        target_ids, target_mask = encode(sp, list(targets))
        decoder_input_ids = torch.cat([torch.full((len(targets), 1), EOS), target_ids[:, :-1]], dim=1)
        batches.append(((input_ids, attention_mask), decoder_input_ids, target_mask.bool()))
    return batches


def next_tokens(model_dir: Path, batches: list[tuple]) -> list[torch.Tensor]:
    """The ONNX translator's most likely next token at every reference position of `batches` (-1 elsewhere)."""
    from optimum.onnxruntime import ORTModelForSeq2SeqLM
    model = load_onnx(ORTModelForSeq2SeqLM, model_dir, threads=torch.get_num_threads())
    out = []
    for (input_ids, attention_mask), decoder_input_ids, mask in batches:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                       use_cache=False).logits
        out.append(torch.as_tensor(logits).argmax(-1).masked_fill(~mask, -1))
    return out


def token_agreement(reference: list, tokens: list) -> float:
    """The share of reference positions, over all batches, where two runs of next_tokens agree."""
    same = sum(int(((r == t) & (r >= 0)).sum()) for r, t in zip(reference, tokens))
    return same / sum(int((r >= 0).sum()) for r in reference)
