"""tabulate: every evaluated variant in one tidy table, and the headline numbers as DVC metrics.

Reads reports/eval/<model>.csv of every selected model; writes reports/variants.csv (one row per
variant, split and metric) and reports/metrics.json (per task and size: the task's metric of the dense
fp32 model and of its ONNX fp32 and int8 deployment models, and of the random-initialisation control as
`<size>-random`; per pretraining size its final valid loss in bits beside the unigram baseline's), which
`dvc metrics show`, `dvc metrics diff` and `dvc exp show` display.

Usage: python -m stages.tabulate
"""
import csv
import json
from pathlib import Path

from stages.evaluate import FIELDS
from stages.lib import StageError, load_params, log, run_stage, write_json

EVAL_DIR = Path("reports/eval")
CURVES = Path("reports/curves")
UNIGRAM = Path("data/bin/mlm/unigram.json")
# GLUE tasks: their first metric in the table, the first of the catalog's `metrics` (evaluate writes it first)
HEADLINE_METRIC = {"translation": "bleu"}


def main(argv):
    params = load_params()
    expected = [f"{s}-{t}" for s in params.pretrain.sizes for t in params.data.glue_tasks] + \
               [f"{s}-{t}-random" for s in params.finetune.random_init_sizes for t in params.data.glue_tasks] + \
               [f"mt-{s}" for s in params.train_mt.sizes]
    missing = [name for name in expected if not (EVAL_DIR / f"{name}.csv").exists()]
    if missing:
        raise StageError(f"{EVAL_DIR}: no evaluation of {missing} (run `dvc repro evaluate_glue evaluate_mt`)")
    rows = []
    for name in expected:
        with open(EVAL_DIR / f"{name}.csv") as f:
            rows += list(csv.DictReader(f))
    with open("reports/variants.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    write_json("reports/metrics.json", {**headline(rows), "pretrain": pretraining(params.pretrain.sizes)})
    log(f"wrote reports/variants.csv ({len(rows)} rows) and reports/metrics.json")


def headline(rows: list[dict]) -> dict:
    """{task: {size: {...}}}: the task's metric for the dense fp32 model and the sparsity-0 ONNX fp32 and
    int8 models, with the int8 model's latency and zipped bytes."""
    metrics = {}
    for r in rows:
        metric = HEADLINE_METRIC.get(r["task"]) or first_metric(rows, r["task"])
        if r["metric"] != metric or r["split"] not in ("dev", "test", "dev_matched") or float(r["target_sparsity"]):
            continue
        size = r["size"] + ("-random" if r.get("init") == "random" else "")
        entry = metrics.setdefault(r["task"], {}).setdefault(size, {})
        key = {"fairseq fp32": "fp32", "ONNX fp32": "onnx_fp32", "ONNX int8": "onnx_int8"}.get(r["format"])
        if key:
            entry[f"{metric}_{key}"] = float(r["value"])
            if key != "fp32":
                entry[f"latency_ms_{key}"] = float(r["latency_ms"])
                entry[f"bytes_zip_{key}"] = int(r["bytes_zip"])
    return metrics


def pretraining(sizes: list) -> dict:
    """The masked-LM baseline and each size's final validation loss, in bits per token."""
    metrics = {"unigram_bits": json.loads(UNIGRAM.read_text())["valid_bits"]}
    for size in sizes:
        with open(CURVES / f"pretrain-{size}.csv") as f:
            metrics[size] = {"valid_loss_bits": float(list(csv.DictReader(f))[-1]["valid_loss"])}
    return metrics


def first_metric(rows, task):
    return next(r["metric"] for r in rows if r["task"] == task)


if __name__ == "__main__":
    run_stage(main)
