"""finetune: one pretrained size on one GLUE task, following fairseq's RoBERTa GLUE recipe
(examples/roberta/README.glue.md), under the `finetune.budget`; keeps the best checkpoint by dev
accuracy (by loss for a regression task). With --random-init, the same size, recipe and budget from
random weights instead: the control that says what pretraining adds (finetune.random_init_sizes).

Writes models/finetune/<size>-<task>[-random]/ (checkpoint.pt, summary.json) and
reports/curves/finetune-<size>-<task>[-random].csv.

Usage: python -m stages.finetune SIZE TASK [--random-init]
"""
import json
from pathlib import Path

from stages.lib import (StageError, budget_flags, device_flags, launch_data_parallel, load_params,
                        non_embedding_params, run_stage, schedule_flags, train_and_export)
from stages.pretrain import size_flags


def main(argv):
    params = load_params()
    random_init = "--random-init" in argv
    args = [a for a in argv if a != "--random-init"]
    sizes = params.finetune.random_init_sizes if random_init else params.pretrain.sizes
    if len(args) != 2 or args[0] not in sizes or args[1] not in params.data.glue_tasks:
        raise StageError("usage: python -m stages.finetune SIZE TASK [--random-init], SIZE one of pretrain.sizes "
                         f"{params.pretrain.sizes} (with --random-init: of finetune.random_init_sizes "
                         f"{params.finetune.random_init_sizes}), TASK one of data.glue_tasks {params.data.glue_tasks}")
    name, task = args
    if launch_data_parallel(params.training, "stages.finetune", argv):  # training.world_size ranks did it
        return
    size, cfg = params.models.mlm[name], params.finetune
    model = f"{name}-{task}" + ("-random" if random_init else "")
    train_args, flops_of_sample = training_args(params, name, task, init="random" if random_init else None)
    meta = json.loads((Path("data/bin/glue") / task / "meta.json").read_text())
    train_and_export("finetune", model, Path("models/finetune") / model, train_args,
                     flops_of_sample, keep="best",
                     summary={"size": name, "task": task, **size.model_dump(), "budget": cfg.budget.model_dump(),
                              "init": "random" if random_init else "pretrained",
                              "dev_split": meta["fairseq_splits"]["valid"]})


def training_args(params, name: str, task: str, init: Path | str | None = None, budget=None):
    """fairseq-train flags that fine-tune size `name` on `task` from `init` (default: the size's
    pretrained checkpoint; "random": no checkpoint) under `budget` (default: finetune.budget), and the
    FLOPs estimate of a batch. Also the recipe of recovery fine-tuning after pruning (stages/compress.py)."""
    size, cfg = params.models.mlm[name], params.finetune
    data = Path("data/bin/glue") / task
    meta = json.loads((data / "meta.json").read_text())
    metric = ["--regression-target", "--best-checkpoint-metric", "loss"] if meta["regression"] else \
        ["--best-checkpoint-metric", "accuracy", "--maximize-best-checkpoint-metric"]
    init = init or Path("models/pretrain") / name / "checkpoint.pt"
    args = [data, "--task", "sentence_prediction", "--criterion", "sentence_prediction",
            *([] if init == "random" else ["--finetune-from-model", init]),
            "--arch", "roberta", *size_flags(size, params.pretrain.tokens_per_sample),
            "--num-classes", meta["num_classes"], "--init-token", 0, "--separator-token", 2,
            "--shorten-method", "truncate", "--batch-size", cfg.batch_size,
            "--required-batch-size-multiple", 1, *metric, "--seed", params.training.seed,
            *schedule_flags(cfg), *budget_flags(budget or cfg.budget), *device_flags(params.training)]
    n = non_embedding_params(size)

    def flops_of_sample(sample):
        tokens = sample["net_input"]["src_tokens"].numel()
        return tokens, 6.0 * n * tokens

    return args, flops_of_sample


if __name__ == "__main__":
    run_stage(main)
