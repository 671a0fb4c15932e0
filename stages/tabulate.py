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

from lib.errors import StageError, log
from lib.files import write_json
from lib.params import load_params
from lib.stage import run_stage
from lib.variants import EVAL_FIELDS, headline_rows, model_name

EVAL_DIR = Path("reports/eval")
CURVES = Path("reports/curves")
UNIGRAM = Path("data/bin/mlm/unigram.json")


def main(argv):
    params = load_params()
    tasks = params.data.glue_tasks
    expected = [model_name(s, t) for s in params.pretrain.sizes for t in tasks] + \
               [model_name(s, t, random_init=True) for s in params.finetune.random_init_sizes for t in tasks] + \
               [model_name(s, "translation") for s in params.train_mt.sizes]
    missing = [name for name in expected if not (EVAL_DIR / f"{name}.csv").exists()]
    if missing:
        raise StageError(f"{EVAL_DIR}: no evaluation of {missing} (run `dvc repro evaluate_glue evaluate_mt`)")
    rows = []
    for name in expected:
        with open(EVAL_DIR / f"{name}.csv") as f:
            rows += list(csv.DictReader(f))
    with open("reports/variants.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, EVAL_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    write_json("reports/metrics.json", {**headline(rows), "pretrain": pretraining(params.pretrain.sizes)})
    log(f"wrote reports/variants.csv ({len(rows)} rows) and reports/metrics.json")


def headline(rows: list[dict]) -> dict:
    """{task: {size: {...}}}: the task's metric for the dense fp32 model and the sparsity-0 ONNX fp32, int8
    and int4 models, with the ONNX models' latency and zipped bytes."""
    metrics = {}
    for task, size, key, r in headline_rows(rows):
        entry = metrics.setdefault(task, {}).setdefault(size, {})
        entry[f"{r['metric']}_{key}"] = float(r["value"])
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


if __name__ == "__main__":
    run_stage(main)
