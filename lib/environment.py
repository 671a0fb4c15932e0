"""What a report's numbers were measured with: hardware, package versions, budgets, data caps, compression and
evaluation settings, and the size grid."""
import json
import platform
from importlib import metadata
from pathlib import Path

import pandas as pd

from lib.figures import table
from lib.glue_task import GLUE_DATA

PACKAGES = ["torch", "fairseq", "ve-fairseq", "fairseq-fixed", "transformers", "optimum", "optimum-onnx",
            "onnxruntime", "sacrebleu", "dvc", "seaborn"]


def environment(params, variants: pd.DataFrame) -> str:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    caps = {}
    # what the prepare stages capped (dvc.yaml's report stage declares these files)
    for path in [Path("data/bin/mlm/caps.json"), Path("data/bin/mt/caps.json"),
                 *(GLUE_DATA / task / "meta.json" for task in params.data.glue_tasks)]:
        recorded = json.loads(path.read_text())
        caps[str(path.parent)] = recorded.get("caps", recorded)
    sizes = pd.DataFrame([{"task": kind, "size": n, **s.model_dump()}
                          for kind, grid, names in (("masked LM", params.models.mlm, params.pretrain.sizes),
                                                    ("translation", params.models.mt, params.train_mt.sizes))
                          for n, s in grid.items() if n in names])
    return "\n".join([
        "## Environment", "",
        f"- evaluation hardware: {', '.join(sorted(variants.hardware.unique()))}; {params.evaluate.threads} threads;"
        f" training device `{params.training.device}`, precision `{params.training.precision}`",
        f"- python {platform.python_version()}; " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- budgets: pretrain {params.pretrain.recipe.budget.model_dump()}, finetune {params.finetune.recipe.budget.model_dump()},"
        f" translation {params.train_mt.recipe.budget.model_dump()}",
        f"- data caps: {json.dumps(caps)}",
        f"- compression: {params.compress.pruning} magnitude pruning, quantization scales per "
        f"{params.compress.granularity}, recovery fine-tuning after pruning: "
        + (f"{params.compress.recovery.model_dump()}" if params.compress.recovery.seconds or
           params.compress.recovery.updates else "none (the paper's setting)"),
        f"- evaluation caps: dev {params.evaluate.max_dev_examples}, test {params.evaluate.max_test_sentences};"
        f" beam {params.evaluate.beam}",
        "", table(sizes)])
