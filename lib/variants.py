"""The variant format on disk: the models stages/compress.py writes under models/compressed/<model>/, one
directory per variant with its variant.json, and the rows evaluate writes for them (reports/eval/*.csv),
which tabulate, report, check and bench read."""
from pathlib import Path

from lib.errors import StageError

COMPRESSED_DIR = Path("models/compressed")
VARIANT_FILE = "variant.json"   # in every variant directory: what it is, its sizes, its source checkpoint
WEIGHTS_FILE = "weights.pt"     # a fairseq variant's matrices (fp32, or packed k-bit codes and scales; each dense or
                                # a bitmask and its non-zeros: lib/variant_weights.compact)
RECOVERED_DIR = "recovered"     # recovered/s<sparsity>/: the checkpoint after recovery fine-tuning
# variant.json's `format`: how the variant is stored and run
FAIRSEQ_FP32, SIMULATED, ONNX_FP32, ONNX_INT8, ONNX_INT4 = \
    "fairseq fp32", "simulated k-bit", "ONNX fp32", "ONNX int8", "ONNX int4"
# the ONNX variants of one sparsity: (variant_name's onnx suffix, bits, format)
ONNX_FORMATS = (("fp32", 32, ONNX_FP32), ("int8", 8, ONNX_INT8), ("int4", 4, ONNX_INT4))
# the split a task's headline number is read on: GLUE's dev set (MNLI's matched one), translation's test set
HEADLINE_SPLITS = ("dev", "dev_matched", "test")
# evaluate's rows: one per (variant, split, metric)
EVAL_FIELDS = ["model", "task", "size", "layers", "hidden", "init", "variant", "format", "target_sparsity", "sparsity",
               "bits", "parameters", "nonzero_parameters", "bits_per_weight", "bytes", "bytes_zip", "split", "examples",
               "metric", "value", "ci_low", "ci_high", "constant_score", "latency_ms", "throughput",
               "throughput_unit", "threads", "device", "hardware", "quantization", "agreement", "details"]


def sparsity_tag(sparsity: float) -> str:
    """A sparsity as variant and recovery directories name it: s0.50 (the schema refuses two that round alike)."""
    return f"s{sparsity:.2f}"


def variant_name(sparsity: float, bits: int, onnx: str | None = None) -> str:
    """s0.50-fp32, s0.50-q4 (fairseq, simulated k-bit), onnx-s0.50-fp32 / -int8 / -int4 (deployment)."""
    if onnx:
        return f"onnx-{sparsity_tag(sparsity)}-{onnx}"
    return f"{sparsity_tag(sparsity)}-{'fp32' if bits == 32 else f'q{bits}'}"


DENSE = variant_name(0.0, 32)   # the uncompressed model every comparison starts from


def model_name(size: str, task: str, random_init: bool = False) -> str:
    """A compressed model's directory under models/compressed and its reports/eval/<name>.csv: <size>-<task>,
    <size>-<task>-random (the pretraining control), mt-<size> (task "translation")."""
    if task == "translation":
        return f"mt-{size}"
    return f"{size}-{task}" + ("-random" if random_init else "")


def is_onnx(fmt: str) -> bool:
    return fmt in (ONNX_FP32, ONNX_INT8, ONNX_INT4)


def headline_metrics(rows) -> dict:
    """{task: its headline metric}: the first metric of the task's rows other than the dev loss, since evaluate
    writes a GLUE task's catalog metrics in their order (the catalog's first is the headline); translation's
    is bleu. `rows`: evaluate's rows as dicts."""
    headline = {}
    for r in rows:
        if r["metric"] != "loss":
            headline.setdefault(r["task"], r["metric"])
    return headline


# the formats reports/metrics.json reports, at sparsity 0, by the suffix of their metric's key
HEADLINE_FORMATS = {FAIRSEQ_FP32: "fp32", ONNX_FP32: "onnx_fp32", ONNX_INT8: "onnx_int8", ONNX_INT4: "onnx_int4"}


def headline_rows(rows):
    """(task, size, format key, row) for each row behind reports/metrics.json: the task's headline metric on
    its headline split, of the dense fp32 model and the sparsity-0 ONNX models (HEADLINE_FORMATS); size is
    <size>-random for the random-initialisation control. tabulate writes them, check reads their intervals."""
    headline_of = headline_metrics(rows)
    for r in rows:
        key = HEADLINE_FORMATS.get(r["format"])
        if key and r["metric"] == headline_of[r["task"]] and r["split"] in HEADLINE_SPLITS \
                and not float(r["target_sparsity"]):
            yield r["task"], r["size"] + ("-random" if r.get("init") == "random" else ""), key, r


def model_arg(argv, params, stage: str):
    """The model a per-model stage (compress, evaluate) works on: `glue SIZE TASK [--random-init]` or
    `mt SIZE`. Returns its name (model_name), size name, task ("translation" for mt), size
    and source dir. --random-init: the pretraining control of that size (finetune.random_init_sizes)."""
    glue, mt = argv[:1] == ["glue"], argv[:1] == ["mt"]
    random_init = glue and len(argv) == 4 and argv[3] == "--random-init"
    sizes = params.finetune.random_init_sizes if random_init else params.pretrain.sizes
    if glue and len(argv) == 3 + random_init and argv[1] in sizes and argv[2] in params.data.glue_tasks:
        name = model_name(argv[1], argv[2], random_init)
        return name, argv[1], argv[2], params.models.mlm[argv[1]], Path("models/finetune") / name
    if mt and len(argv) == 2 and argv[1] in params.train_mt.sizes:
        return model_name(argv[1], "translation"), argv[1], "translation", params.models.mt[argv[1]], \
            Path("models/mt") / argv[1]
    raise StageError(f"usage: python -m stages.{stage} glue SIZE TASK [--random-init] | mt SIZE, with SIZE one of "
                     f"pretrain.sizes {params.pretrain.sizes} (glue; with --random-init of finetune.random_init_sizes "
                     f"{params.finetune.random_init_sizes}) or train_mt.sizes {params.train_mt.sizes} (mt), TASK one "
                     f"of data.glue_tasks {params.data.glue_tasks}")
