"""Deployment speed: PyTorch fp32 (the fairseq model), ONNX Runtime fp32, int8 and int4 of each
fine-tuned classifier and translation model, measured exactly as `python -m stages.evaluate` measures
them (its GlueEval / TranslationEval, hence its `speed` and `load_onnx`): batch-1 latency over
`evaluate.latency_examples` dev inputs (median of `evaluate.repeats` runs) and throughput at
`evaluate.batch_size` over `evaluate.throughput_examples` (after a warm-up), `evaluate.threads` threads
(torch and ONNX Runtime intra-op),
on real dev sentences (GLUE) and test sentences (translation), with the dev accuracy / test BLEU of each
format. PyTorch runs on token tensors, ONNX Runtime on raw text (its timing includes tokenization).

Models come from models/compressed/<size>-<task>/ (s0.00-fp32, onnx-s0.00-fp32, -int8, -int4); where
the pipeline has not written them, they are built in a temp dir from models/finetune/<size>-<task>/ the
way stages.compress does. Each format runs in its own child process (its peak memory: loading + dev
set at the evaluation batch + timing).
"""
import json
import tempfile
from pathlib import Path

from bench.memory import in_child

from lib.variants import DENSE, variant_name

FORMATS = {"pytorch_fp32": DENSE, "onnx_fp32": variant_name(0.0, 32, "fp32"), "onnx_int8": variant_name(0.0, 8, "int8"),
           "onnx_int4": variant_name(0.0, 4, "int4")}


def run_glue(sizes: list, tasks: list, overrides: dict) -> list:
    rows = []
    for size in sizes:
        for task in tasks:
            with tempfile.TemporaryDirectory() as tmp:
                root, source = glue_models(size, task, Path(tmp))
                if root is None:
                    print(f"deployment {size}-{task}: skipped ({source})", flush=True)
                    continue
                row = {"model": f"{size}-{task}", "size": size, "task": task, "source": source}
                for fmt, variant in FORMATS.items():
                    row[fmt] = in_child(glue_format, str(root / variant), task, fmt, overrides)
            rows.append(compare(row, "accuracy"))
    return rows


def run_mt(sizes: list, overrides: dict) -> list:
    rows = []
    for size in sizes:
        root = Path("models/compressed") / f"mt-{size}"
        if not all((root / v).is_dir() for v in FORMATS.values()):  # measured only where the pipeline made them
            print(f"deployment mt-{size}: skipped (no {', '.join(FORMATS.values())} in {root})", flush=True)
            continue
        row = {"model": f"mt-{size}", "size": size, "task": "translation", "source": str(root)}
        for fmt, variant in FORMATS.items():
            row[fmt] = in_child(mt_format, str(root / variant), fmt, overrides)
        rows.append(compare(row, "bleu"))
    return rows


def compare(row: dict, metric: str) -> dict:
    """int8 over PyTorch fp32 and over ONNX fp32: throughput at the evaluation batch, batch-1 speed (latency
    ratio); the metric's drop for int8 and int4; int4's zipped bytes over ONNX fp32's."""
    fp32, onnx_fp32, int8, int4 = (row[f] for f in FORMATS)
    row["int8_speedup_batch"] = int8["throughput"] / fp32["throughput"]
    row["int8_speedup_batch1"] = fp32["latency_ms"] / int8["latency_ms"]
    row["int8_over_onnx_fp32_batch"] = int8["throughput"] / onnx_fp32["throughput"]
    row[f"{metric}_drop"] = fp32[metric] - int8[metric]
    row[f"int4_{metric}_drop"] = fp32[metric] - int4[metric]
    row["int4_zip_ratio"] = int4["bytes_zip"] / onnx_fp32["bytes_zip"]
    print(f"deployment {row['model']}: " + ", ".join(
        f"{f} {row[f]['latency_ms']:.1f} ms / {row[f]['throughput']:.0f} per s / {metric} {row[f][metric]:.2f}"
        for f in FORMATS) + f"; int8 / PyTorch fp32 x{row['int8_speedup_batch']:.2f} at batch, "
        f"x{row['int8_speedup_batch1']:.2f} at batch 1, {metric} drop {row[f'{metric}_drop']:.2f}; int4 zipped "
        f"{row['int4_zip_ratio']:.3f} of ONNX fp32", flush=True)
    return row


def glue_models(size: str, task: str, tmp: Path):
    """(directory holding the three formats, where they came from), or (None, why not)."""
    root = Path("models/compressed") / f"{size}-{task}"
    if all((root / v).is_dir() for v in FORMATS.values()):
        return root, str(root)
    source = Path("models/finetune") / f"{size}-{task}" / "checkpoint.pt"
    if not source.exists():
        return None, f"neither {root} nor {source}"
    in_child(build_glue, str(source), task, str(tmp))
    return tmp, f"built in a temp dir from {source}"


def build_glue(source: str, task: str, out: str) -> dict:
    """What stages.compress writes for sparsity 0, from the fine-tuned checkpoint: the fairseq fp32
    variant (no weights replaced) and the ONNX fp32, int8 and int4 models."""
    import torch
    from lib.glue_task import class_labels, label_names
    from lib.params import load_params
    from lib.variants import FAIRSEQ_FP32, ONNX_FORMATS, VARIANT_FILE, WEIGHTS_FILE
    from lib.hf_roberta import export_onnx_classifier, save_transformers_classifier
    from lib.checkpoints import load_checkpoint
    from lib.files import write_json
    from lib.onnx_export import onnx_files, zipped_bytes
    from stages.compress import glue_texts
    out, cfg = Path(out), load_params().compress
    with tempfile.TemporaryDirectory() as hf_dir:
        save_transformers_classifier(load_checkpoint(Path(source)), Path("data/bin/mlm/spm.model"),
                                     class_labels(task), Path(hf_dir),
                                     label_names(task, load_params().datasets[task].label_names))
        dirs = [out / FORMATS[f"onnx_{suffix}"] for suffix, _, _ in ONNX_FORMATS]
        checked = export_onnx_classifier(Path(hf_dir), *dirs, glue_texts(task, cfg.int8_check_examples),
                                         cfg.int8_min_agreement)
    for directory, (suffix, bits, fmt) in zip(dirs, ONNX_FORMATS):
        write_json(directory / VARIANT_FILE, {"format": fmt, "bits": bits, "target_sparsity": 0.0,
                                              "bytes_zip": zipped_bytes(onnx_files(directory)),
                                              **({"quantization": checked[suffix]} if suffix in checked else {})})
    dense = out / FORMATS["pytorch_fp32"]
    dense.mkdir()
    torch.save({}, dense / WEIGHTS_FILE)
    write_json(dense / VARIANT_FILE, {"format": FAIRSEQ_FP32, "target_sparsity": 0.0, "source": source})
    return {}


def evaluate_cfg(overrides: dict):
    """params.yaml's `evaluate` section with the benchmark's overrides, and torch's threads set to it."""
    import torch
    from lib.params import load_params
    params = load_params()
    cfg = params.evaluate.model_copy(update=overrides)
    torch.set_num_threads(cfg.threads)
    return params, cfg


def glue_format(variant: str, task: str, fmt: str, overrides: dict) -> dict:
    from lib.variants import VARIANT_FILE
    from stages.evaluate import GlueEval
    params, cfg = evaluate_cfg(overrides)
    evaluator = GlueEval(cfg, task, params.datasets[task].metrics, params.datasets[task].label_names)
    variant = Path(variant)
    if fmt == "pytorch_fp32":
        results, timing = evaluator.fairseq(variant, json.loads((variant / VARIANT_FILE).read_text()))
    else:
        results, timing = evaluator.onnx(variant, None)
    split, examples, _, value, low, high, _ = next(r for r in results if r[2] == "accuracy")
    return {**timing, "accuracy": value, "accuracy_ci": [low, high], "split": split, "examples": examples,
            "threads": cfg.threads, "batch_size": cfg.batch_size, "repeats": cfg.repeats, **described(variant)}


def mt_format(variant: str, fmt: str, overrides: dict) -> dict:
    from lib.variants import VARIANT_FILE
    from stages.evaluate import TranslationEval
    params, cfg = evaluate_cfg(overrides)
    evaluator, variant = TranslationEval(cfg, params.data.translation), Path(variant)
    if fmt == "pytorch_fp32":
        results, timing = evaluator.fairseq(variant, json.loads((variant / VARIANT_FILE).read_text()))
    else:
        results, timing = evaluator.onnx(variant, None)
    split, examples, _, value, low, high, _ = results[0]
    return {**timing, "bleu": value, "bleu_ci": [low, high], "split": split, "examples": examples,
            "beam": cfg.beam, "threads": cfg.threads, "batch_size": cfg.batch_size, "repeats": cfg.repeats,
            **described(variant)}


def described(variant: Path) -> dict:
    """A variant's zipped bytes and, for int8 / int4, its quantization scheme and agreement with fp32."""
    from lib.variants import VARIANT_FILE
    info = json.loads((variant / VARIANT_FILE).read_text())
    quantized = info.get("quantization", {})
    return {"bytes_zip": info.get("bytes_zip"), "quantization": quantized.get("scheme"),
            "agreement": quantized.get("agreement"), "quantized_on": quantized.get("cpu")}


# the missed targets a profile can explain, by the profile that explains them: both batch-32 throughput
# targets of a classifier come from one profile at the evaluation batch
EXPLAINED = {"glue": {"target_speedup": "batch", "target_over_onnx": "batch", "target_batch1": "batch 1",
                      "target_int4_bytes": "int4 bytes"},
             "mt": {"target_batch1": "batch 1"}}


def explain_misses(results: dict) -> None:
    """For each missed speed or size target of a pipeline-made model, what its profile shows the time or the
    bytes go to (bench.ort_profile, each in a child process), written beside the target as its "why"."""
    cfg, threads = results["settings"]["evaluate"], results["settings"]["eval_threads"]
    found = {}  # (model, profile) -> what it shows, each profile run once
    for kind, profiles in EXPLAINED.items():
        for row in results["deployment"][kind]:
            for key, profile in profiles.items():
                if row.get(key, {}).get("pass") is not False:
                    continue
                if not row["source"].startswith("models/compressed"):
                    row[key]["why"] = "not profiled: the models were built in a temp dir"
                    continue
                if (row["model"], profile) not in found:
                    found[row["model"], profile] = profile_of_miss(kind, profile, row, cfg, threads)
                row[key]["why"] = found[row["model"], profile]
                print(f"deployment {row['model']}: {key} missed: {row[key]['why']}", flush=True)


def profile_of_miss(kind: str, profile: str, row: dict, cfg: dict, threads: int) -> str:
    from bench import ort_profile
    model_dir = Path(row["source"])
    if kind == "mt":
        args = (str(model_dir / FORMATS["onnx_int8"]), cfg["latency_examples"], cfg["beam"], threads)
        return in_child(explained, "generation", args)["why"]
    if profile == "int4 bytes":
        return in_child(explained, "int4_bytes", (str(model_dir / FORMATS["onnx_int4"]),))["why"]
    batch, repeats = (1, 30) if profile == "batch 1" else (cfg["batch_size"], 10)
    found = in_child(explained, "profile", (row["model"], 0.0, batch, threads, repeats))["profile"]
    return ort_profile.classifier_summary(found)


def explained(what: str, args: tuple) -> dict:
    from bench import ort_profile
    if what == "profile":
        return {"profile": ort_profile.classifier_profile(*args)}
    return {"why": {"int4_bytes": ort_profile.int4_bytes, "generation": ort_profile.generation_profile}[what](*args)}
