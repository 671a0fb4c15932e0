"""finetune: one pretrained size on one GLUE task, following fairseq's RoBERTa GLUE recipe
(examples/roberta/README.glue.md, lib/recipes.py), under `finetune.recipe`'s budget; keeps the best
checkpoint by dev accuracy (by loss for a regression task). With --random-init, the same size, recipe and
budget from random weights instead: the control that says what pretraining adds (finetune.random_init_sizes).

Writes models/finetune/<size>-<task>[-random]/ (checkpoint.pt, summary.json) and
reports/curves/finetune-<size>-<task>[-random].csv.

Usage: python -m stages.finetune SIZE TASK [--random-init]
"""
from pathlib import Path

from lib.devices import launch_data_parallel
from lib.errors import StageError
from lib.glue_task import glue_meta
from lib.harness import train_and_export
from lib.params import load_params
from lib.recipes import finetune_args
from lib.stage import run_stage
from lib.variants import model_name


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
    model = model_name(name, task, random_init)
    train_args, flops_of_batch = finetune_args(params, name, task, init="random" if random_init else None)
    train_and_export("finetune", model, Path("models/finetune") / model, train_args, flops_of_batch, keep="best",
                     summary={"size": name, "task": task, **params.models.mlm[name].model_dump(),
                              "budget": params.finetune.recipe.budget.model_dump(),
                              "init": "random" if random_init else "pretrained",
                              "dev_split": glue_meta(task)["fairseq_splits"]["valid"]})


if __name__ == "__main__":
    run_stage(main)
