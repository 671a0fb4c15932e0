"""What both ONNX exports (lib/hf_roberta.py, lib/hf_m2m100.py) share: ONNX Runtime's int8 quantization in the
format the CPU computes fastest and correctly, checked against fp32 with a fallback; its 4-bit block
quantization (MatMulNBits); the files of a model over protobuf's 2 GB limit (weights in external data, beside
the .onnx); and a quiet export.

int8 schemes (dynamic: activation scales computed at run time, no calibration data; weights per channel).
ONNX Runtime's u8 x s8 kernel is the fast one: VPDPBUSD where the CPU has VNNI (AVX-512 VNNI;
AMX-INT8 CPUs have it too), VPMADDUBSW elsewhere, which sums pairs of products in 16 bits and can
saturate at full 7-bit weight range (seen on an AVX2-only CPU: 60% agreement with fp32 on SST-2 dev);
`reduce_range` (7-bit weights) keeps those sums in range. u8 x u8 widens to 16 bits first, never uses VNNI
and never saturates: the fallback when the chosen scheme loses agreement with fp32.

No offline graph fusions (optimum's ORTOptimizer): measured on SST-2 L4-H384 (Intel Xeon with AMX, 2 threads),
its levels 1 and 2 ran the fp32 model at 138-168 sentences/s at batch 32 against 141 without, and the same
4.5-4.9 ms at batch 1, within the run-to-run noise: ONNX Runtime already applies its CPU fusions when a
session loads the graph. And ORT's quantizer cannot quantize a fused graph (no shape inference through the
contrib Attention / SkipLayerNormalization ops), so the int8 models could not use them at all."""
import contextlib
import logging
import os
import warnings
from pathlib import Path

from lib import hardware

# scheme -> (optimum's AutoQuantizationConfig constructor, its keyword arguments), what each computes
INT8_SCHEMES = {
    "u8s8": ("avx512_vnni", {}),                        # u8 activations x s8 weights, full range
    "u8s8-reduce-range": ("avx512", {"reduce_range": True}),  # ... with 7-bit weights
    "u8u8": ("avx2", {}),                               # u8 x u8, full range
}
FALLBACK = "u8u8"
VNNI_FLAGS = ("avx512_vnni", "amx_int8")  # as lib.hardware.isa_flags() lists them
# MatMulNBits' block of weights sharing one fp32 scale (along the input dimension). Measured on SST-2 L4-H384
# (the head in int4 too): blocks of 32 / 64 / 128 zip to 0.161 / 0.143 / 0.132 of fp32, at 73.3 / 73.4 / 73.6
# dev accuracy (fp32 73.6); the L4-H256 translator's next-token agreement with fp32 is 0.942 / 0.941 / 0.936
INT4_BLOCK = 128
INT4_SCHEME = f"s4 weights in blocks of {INT4_BLOCK}, u8 activations"  # what variant.json records
# protobuf cannot serialize a message of 2 GiB or more, so a model file this large (weights included) cannot be
# written or read whole: its weights go to an external data file beside it. Less a margin: a model this close
# to the limit takes that layout too, whatever the quantizers add to its graph
EXTERNAL_DATA_BYTES = 2**31 - 2**27


def quantization_columns(quantized: dict) -> tuple[str, object, str]:
    """An evaluation row's view of variant.json's `quantization` (int8 and int4 models; {} for others): the
    scheme with the CPU flags it was chosen for, its agreement with fp32, and a note when this CPU is not the
    one that quantized, where the scheme may be slower or saturate."""
    scheme = quantized.get("scheme", "") + (f" [{' '.join(quantized['isa'])}]" if "isa" in quantized else "")
    elsewhere = "" if quantized.get("cpu") in (None, hardware.cpu()) else \
        f"quantized on {quantized['cpu']}, run on {hardware.cpu()}"
    return scheme, quantized.get("agreement", ""), elsewhere


def int8_scheme(flags: list[str]) -> tuple[str, str]:
    """The int8 scheme for a CPU with these /proc/cpuinfo flags (lib.hardware.isa_flags()), and why."""
    if any(f in flags for f in VNNI_FLAGS):
        return "u8s8", f"{'/'.join(f for f in flags if f in VNNI_FLAGS)}: u8 x s8 in VNNI's 32-bit sums"
    if "avx2" in flags or "avx512f" in flags:
        return "u8s8-reduce-range", "no VNNI: u8 x s8 with 7-bit weights so 16-bit pair sums cannot saturate"
    return FALLBACK, "neither AVX2 nor VNNI: u8 x u8"


def quantize_int8(fp32_dir: Path, file_name: str, int8_dir: Path, scheme: str,
                  suffix: str | None = "quantized") -> None:
    """ONNX Runtime dynamic int8 quantization of fp32_dir/file_name into int8_dir (file name + "_" + suffix; no
    suffix: the same name, with ort_config.json recording the settings), per-channel weights, in `scheme`
    (INT8_SCHEMES)."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig
    source = Path(fp32_dir) / file_name
    constructor, options = INT8_SCHEMES[scheme]
    qconfig = getattr(AutoQuantizationConfig, constructor)(
        is_static=False, per_channel=True, nodes_to_exclude=activation_matmuls(source), **options)
    remove_model(Path(int8_dir) / f"{source.stem}{f'_{suffix}' if suffix else ''}.onnx")  # the name optimum writes
    ORTQuantizer.from_pretrained(fp32_dir, file_name=file_name).quantize(
        qconfig, save_dir=int8_dir, file_suffix=suffix, use_external_data_format=external_data(source))


def activation_matmuls(path: Path) -> list[str]:
    """The MatMul nodes without a constant weight: attention's scores (Q K^T) and its weighted sum of values.
    Dynamic quantization of both operands costs more than it saves, and blocks the fusion of K's transpose
    into the MatMul: measured on a translator's decoder (L4-H256, batch 32, beam 4), Transpose took 35% of
    its kernel time when they were quantized (ONNX Runtime's profiler), and fp32 generation beat int8.
    ONNX Runtime's own quantize_dynamic calls this MatMulConstBOnly; optimum does not expose it. Reads the graph
    and the weights' names only, not the weights: a model in external data costs no more."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    weights = {tensor.name for tensor in model.graph.initializer}
    return [node.name for node in model.graph.node if node.op_type == "MatMul" and node.input[1] not in weights]


def checked_int8(quantize, agreement, min_agreement: float, flags: list[str] | None = None) -> dict:
    """Quantize in the scheme `flags` call for (default: this CPU's), measure its agreement with fp32 and,
    below `min_agreement`, quantize again in the u8u8 fallback and keep whichever agrees more.
    `quantize(scheme)` writes the int8 model (overwriting), `agreement()` measures the one written
    (a fraction, 1 = same outputs as fp32). Returns what was chosen and why, for variant.json."""
    flags = hardware.isa_flags() if flags is None else flags
    scheme, why = int8_scheme(flags)
    quantize(scheme)
    tried = {scheme: round(agreement(), 4)}
    if tried[scheme] < min_agreement and scheme != FALLBACK:
        quantize(FALLBACK)
        tried[FALLBACK] = round(agreement(), 4)
        if tried[FALLBACK] <= tried[scheme]:  # no better: back to the faster scheme
            quantize(scheme)
        else:
            why = (f"{scheme} agreed with fp32 on {tried[scheme]:.2%} (< compress.int8_min_agreement "
                   f"{min_agreement:.0%}), {FALLBACK} on {tried[FALLBACK]:.2%}")
            scheme = FALLBACK
    return {"scheme": scheme, "why": why, "agreement": tried[scheme], "tried": tried,
            "isa": flags, "cpu": hardware.cpu() if flags == hardware.isa_flags() else "injected flags"}


def quantize_int4(fp32_dir: Path, file_name: str, int4_dir: Path, out_name: str) -> None:
    """ONNX Runtime 4-bit weight-only quantization of fp32_dir/file_name into int4_dir/out_name: every
    MatMul with a constant weight becomes MatMulNBits and every embedding Gather GatherBlockQuantized,
    symmetric int4 in blocks of INT4_BLOCK with one fp32 scale each (4.25 bits a weight with the scales).
    accuracy_level 4: the activations are quantized to int8 per block at run time, so the kernel can use
    the CPU's int8 dot products instead of dequantizing every weight to fp32.
    The model is loaded with its external data and quantized in memory (the quantizer's default algorithm never
    serializes it whole), so a model over 2 GB takes the same path, saved in external data as well."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    source, target = Path(fp32_dir) / file_name, Path(int4_dir) / out_name
    model = gemms_as_matmuls(onnx.load(str(source)))  # external data too, from beside the file
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=INT4_BLOCK, is_symmetric=True, accuracy_level=4,
                                     op_types_to_quantize=("MatMul", "Gather"),
                                     quant_axes=(("MatMul", 0), ("Gather", 1)))
    quantizer.process()
    Path(int4_dir).mkdir(parents=True, exist_ok=True)
    remove_model(target)
    quantizer.model.save_model_to_file(str(target), use_external_data_format=external_data(source))


def gemms_as_matmuls(model):
    """`model` with each Gemm of a constant weight (torch exports a Linear on a 2-D input as Gemm: the
    classifier head) rewritten as MatMul + Add, which the 4-bit quantizer takes (it takes MatMul and Gather
    only; the head's fp32 dense layer was 1.4% of SST-2 L4-H384's int4 bytes). The same arithmetic."""
    import numpy as np
    from onnx import helper, numpy_helper
    weights = {t.name: t for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Gemm" or node.input[1] not in weights or attrs.get("transA", 0) \
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(weights[node.input[1]])
        weight = np.ascontiguousarray(weight.T if attrs.get("transB", 0) else weight)
        model.graph.initializer.append(numpy_helper.from_array(weight, f"{node.input[1]}_matmul"))
        biased = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if biased else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], f"{node.input[1]}_matmul"], [product],
                                      name=f"{node.name}_matmul"))
        if biased:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_add"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in model.graph.node for i in n.input}
    kept = [t for t in model.graph.initializer if t.name in used]  # the transposed Gemm weights go
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


def external_data(fp32_path: Path) -> bool:
    """Whether the int8 and int4 models quantized from the fp32 ONNX model at `fp32_path` keep their weights in an
    external data file (`<their file>.data`, ONNX Runtime's name) beside the .onnx: when the fp32 model does
    (optimum's export switches by itself above 2 GB, writing `<file>_data`), when its bytes come within a margin
    of protobuf's limit (EXTERNAL_DATA_BYTES), or when FORCE_ONNX_EXTERNAL_DATA=1: optimum's own switch, which
    forces its fp32 export too, so a tiny model takes a large one's path (the tests). Each file decides for
    itself: a translator's encoder and decoders are separate models."""
    return os.environ.get("FORCE_ONNX_EXTERNAL_DATA") == "1" or Path(fp32_path).stat().st_size >= EXTERNAL_DATA_BYTES \
        or len(model_files(Path(fp32_path))) > 1  # the cheap tests first: this one parses the graph


def model_files(path: Path) -> list[Path]:
    """The ONNX model at `path` and the external data files it names (beside it): what loading it reads."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data
    model = onnx.load(str(path), load_external_data=False)
    return [path, *sorted({path.parent / ExternalDataInfo(t).location for t in _get_all_tensors(model)
                           if uses_external_data(t)})]


def onnx_files(directory: Path) -> list[Path]:
    """A deployment model's files: each .onnx in `directory` and its external data files, if any."""
    return sorted({f for model in Path(directory).glob("*.onnx") for f in model_files(model)})


def share(files: list[Path]) -> None:
    """Make every file of a deployment model (onnx_files) readable by all, as the .onnx files are: onnx writes
    external data files for their owner only (mode 0600), so a model shared on a cluster would not load for
    another user."""
    for f in files:
        f.chmod(f.stat().st_mode | 0o044)


def remove_model(path: Path) -> None:
    """Delete the ONNX model at `path`, if there is one, with its external data files: onnx appends external
    data to a file already there, so a model written again (checked_int8's fallback) would keep the old weights."""
    if path.exists():
        for f in model_files(path):
            f.unlink(missing_ok=True)


def zipped_bytes(files: list[Path]) -> int:
    """The size of a zip (deflate) of a deployment model's files (onnx_files: the .onnx files and their external
    data): its bytes_zip in variant.json."""
    import io
    import zipfile
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.writestr(f.name, f.read_bytes())  # one deflate call, which releases the GIL (compress zips in a thread)
    return buffer.tell()


@contextlib.contextmanager
def quiet():
    """Silence the tracer warnings and info logs of an export; errors still show."""
    loggers = [logging.getLogger(n) for n in ("transformers", "optimum", "torch.onnx", "onnxruntime")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
