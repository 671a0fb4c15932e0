"""Models over protobuf's 2 GB limit keep their weights in external data files beside each .onnx
(lib.onnx_export.external_data). Forced on tiny random models (FORCE_ONNX_EXTERNAL_DATA=1: optimum's switch, which
the quantizers follow too), the classifier's and the translator's fp32, int8 and int4 exports write them, load
through optimum as evaluation loads them, give the outputs of the same exports without, and a variant's files
and zipped bytes count them."""
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import sentence
from lib import onnx_export
from lib.hf_m2m100 import BOS, EOS, PAD, SPM_FILE, encode, export_onnx_translator, next_tokens, teacher_forced_batches
from lib.hf_roberta import classifier_outputs, export_onnx_classifier
from lib.onnx_export import activation_matmuls, external_data, model_files, onnx_files, zipped_bytes

FORMATS = ("fp32", "int8", "int4")
# no VNNI, and an agreement no model reaches: the u8u8 fallback is tried, so the int8 model is written again
FLAGS, MIN_AGREEMENT = ["avx2"], 1.01
_rng = random.Random(0)
TEXTS = [(sentence(_rng),) for _ in range(16)]
PAIRS = [(sentence(_rng, 3, 9), sentence(_rng, 3, 9)) for _ in range(8)]


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory) -> Path:
    from lib.text import train_sentencepiece
    rng, prefix = random.Random(1), tmp_path_factory.mktemp("spm") / "spm"
    train_sentencepiece((sentence(rng) for _ in range(500)), prefix, 100, "unigram", 500)
    return Path(f"{prefix}.model")


def tiny_classifier(spm_model: Path, out: Path) -> None:
    """A random one-layer XLM-R classifier with its tokenizer, as lib.hf_roberta saves a converted one."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaTokenizerFast
    tokenizer = XLMRobertaTokenizerFast(vocab_file=str(spm_model), model_max_length=64)
    torch.manual_seed(0)
    XLMRobertaForSequenceClassification(XLMRobertaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        num_labels=2)).save_pretrained(out)
    tokenizer.save_pretrained(out)


def tiny_translator(spm_model: Path, out: Path) -> None:
    """A random one-layer M2M100 translator with its spm model, as lib.hf_m2m100 saves a converted one."""
    import sentencepiece
    from transformers import GenerationConfig, M2M100Config, M2M100ForConditionalGeneration
    torch.manual_seed(0)
    model = M2M100ForConditionalGeneration(M2M100Config(
        vocab_size=sentencepiece.SentencePieceProcessor(model_file=str(spm_model)).get_piece_size() + 1,
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, max_position_embeddings=64, scale_embedding=True,
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=EOS, tie_word_embeddings=True))
    model.generation_config = GenerationConfig(bos_token_id=BOS, pad_token_id=PAD, eos_token_id=EOS,
                                               decoder_start_token_id=EOS, max_length=8)
    model.save_pretrained(out)
    shutil.copyfile(spm_model, out / SPM_FILE)


@pytest.fixture(scope="module", params=["classifier", "translator"])
def exported(request, spm_model, tmp_path_factory):
    """A tiny model exported twice: into out/plain/<format> as any model under 2 GB, and into
    out/external/<format> with external data forced. Returns the kind, out and what each export said."""
    kind, out = request.param, tmp_path_factory.mktemp(request.param)
    (tiny_classifier if kind == "classifier" else tiny_translator)(spm_model, out / "hf")
    export = {"classifier": lambda dirs: export_onnx_classifier(out / "hf", *dirs, TEXTS, MIN_AGREEMENT, FLAGS),
              "translator": lambda dirs: export_onnx_translator(out / "hf", *dirs, PAIRS, MIN_AGREEMENT, FLAGS)}[kind]
    checked = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FORCE_ONNX_EXTERNAL_DATA", raising=False)
        checked["plain"] = export([out / "plain" / f for f in FORMATS])
        mp.setenv("FORCE_ONNX_EXTERNAL_DATA", "1")
        checked["external"] = export([out / "external" / f for f in FORMATS])
    return kind, out, checked


def largest_inline_tensor(path: Path) -> int:
    """The bytes of the largest tensor stored in the .onnx file itself."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data
    model = onnx.load(str(path), load_external_data=False)
    return max((len(t.raw_data) for t in _get_all_tensors(model) if not uses_external_data(t)), default=0)


def named_bytes(path: Path) -> dict:
    """Each external data file of the model at `path` -> where its first tensor starts and its last ends."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data
    spans = {}
    for t in _get_all_tensors(onnx.load(str(path), load_external_data=False)):
        if uses_external_data(t):
            info = ExternalDataInfo(t)
            start, end = spans.get(info.location, (info.offset, 0))
            spans[info.location] = (min(start, info.offset), max(end, info.offset + info.length))
    return spans


def test_forced_external_data_holds_every_weight_beside_small_onnx_files(exported):
    kind, out, checked = exported
    for fmt in FORMATS:
        plain, external = out / "plain" / fmt, out / "external" / fmt
        assert onnx_files(plain) == sorted(plain.glob("*.onnx"))  # under 2 GB nothing changes
        assert sorted(plain.glob("*.onnx")) != [] and sorted(f.name for f in plain.glob("*.onnx")) == \
            sorted(f.name for f in external.glob("*.onnx"))
        for model in sorted(external.glob("*.onnx")):
            files = model_files(model)
            # optimum's export names its file <model>_data, ONNX Runtime's quantizers <model>.data
            assert [f.name for f in files[1:]] == [model.name + ("_data" if fmt == "fp32" else ".data")], files
            # every tensor of 1 KB or more is in the data file (ONNX Runtime's threshold; optimum's is 100 bytes)
            assert largest_inline_tensor(model) < 1024 < largest_inline_tensor(plain / model.name)
            assert model.stat().st_size < (plain / model.name).stat().st_size
            # the data file holds what the model names from its first byte to its last: the int8 model, written
            # twice (its fallback was tried), was not appended to the first one's weights
            assert named_bytes(model) == {files[1].name: (0, files[1].stat().st_size)}
    assert all(len(checked[layout]["int8"]["tried"]) == 2 for layout in checked)


def test_external_models_load_through_optimum_with_the_same_outputs(exported):
    kind, out, checked = exported
    for fmt in FORMATS:
        plain, external = out / "plain" / fmt, out / "external" / fmt
        if kind == "classifier":
            np.testing.assert_allclose(classifier_outputs(external, TEXTS), classifier_outputs(plain, TEXTS),
                                       rtol=1e-5, atol=1e-6)
        else:
            import sentencepiece
            batches = teacher_forced_batches(sentencepiece.SentencePieceProcessor(model_file=str(plain / SPM_FILE)),
                                             PAIRS)
            assert all(torch.equal(a, b) for a, b in zip(next_tokens(external, batches), next_tokens(plain, batches)))
            assert generated(external) == generated(plain)  # through the decoder with past too
    # the quantized models agree with fp32 alike
    said = {layout: {fmt: {k: c[k] for k in ("scheme", "agreement", "tried") if k in c} for fmt, c in by_format.items()}
            for layout, by_format in checked.items()}
    assert said["external"] == said["plain"]
    fp32 = next((out / "external" / "fp32").glob("*.onnx"))
    assert activation_matmuls(fp32) == activation_matmuls(out / "plain" / "fp32" / fp32.name) != []


def generated(directory: Path) -> list:
    """Greedy generation (8 tokens at most) from the ONNX translator in `directory`, loaded as evaluation loads it."""
    import sentencepiece
    from optimum.onnxruntime import ORTModelForSeq2SeqLM
    from lib.inference import load_onnx
    input_ids, attention_mask = encode(sentencepiece.SentencePieceProcessor(model_file=str(directory / SPM_FILE)),
                                       [source for source, _ in PAIRS])
    model = load_onnx(ORTModelForSeq2SeqLM, directory, threads=1)
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=1, max_length=8).tolist()


def test_variant_bytes_and_zip_count_the_external_data(exported):
    """What compress records of an ONNX variant (stages.compress.export_onnx: bytes and files from onnx_files,
    bytes_zip from zipped_bytes): the same weights whichever way they are stored."""
    _, out, _ = exported
    for fmt in FORMATS:
        plain, external = out / "plain" / fmt, out / "external" / fmt
        # measured: within 1% (each tensor names its data file), zipped within 3%
        assert stored_bytes(external) == pytest.approx(stored_bytes(plain), rel=0.02), fmt
        assert zipped_bytes(onnx_files(external)) == pytest.approx(zipped_bytes(onnx_files(plain)), rel=0.05), fmt


def stored_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in onnx_files(directory))


def test_external_data_is_chosen_near_the_limit_or_forced(exported, monkeypatch):
    _, out, _ = exported
    monkeypatch.delenv("FORCE_ONNX_EXTERNAL_DATA", raising=False)
    plain, external = (next((out / layout / "fp32").glob("*.onnx")) for layout in ("plain", "external"))
    assert not external_data(plain) and external_data(external)  # a model already in external data stays so
    monkeypatch.setenv("FORCE_ONNX_EXTERNAL_DATA", "1")
    assert external_data(plain)
    monkeypatch.delenv("FORCE_ONNX_EXTERNAL_DATA")
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", plain.stat().st_size)
    assert external_data(plain)


def test_shared_model_files_are_readable_by_every_user(tmp_path):
    """onnx writes external data for its owner only (0600): share() opens every file of the model to all readers."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from lib.onnx_export import share
    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weight])
    onnx.save_model(helper.make_model(graph), str(tmp_path / "model.onnx"), save_as_external_data=True,
                    location="model.onnx.data", size_threshold=0)
    share(onnx_files(tmp_path))
    assert [oct(f.stat().st_mode & 0o777) for f in sorted(tmp_path.iterdir())] == ["0o644", "0o644"]

