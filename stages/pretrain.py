"""pretrain: RoBERTa masked-LM pretraining of one model size until its budget is spent.

fairseq's RoBERTa pretraining recipe (examples/roberta/README.pretraining.md, lib/recipes.py) with the size
from params.yaml's `models.mlm` and the recipe from `pretrain.recipe`. Writes models/pretrain/<size>/
(checkpoint.pt without optimizer state, summary.json) and reports/curves/pretrain-<size>.csv.
An interrupted run resumes from models/.work/pretrain/<size>/ on the next `dvc repro`.

Usage: python -m stages.pretrain SIZE
"""
import json
from pathlib import Path

from lib.devices import launch_data_parallel
from lib.harness import train_and_export
from lib.model_size import non_embedding_params
from lib.params import load_params, size_arg
from lib.recipes import pretrain_args
from lib.stage import run_stage

UNIGRAM = Path("data/bin/mlm/unigram.json")  # prepare_mlm's baseline: bits per valid token of a unigram


def below_unigram(last: dict) -> list[str]:
    """The summary line's comparison of the final valid loss with the unigram baseline."""
    if not UNIGRAM.exists():
        return []
    gap = json.loads(UNIGRAM.read_text())["valid_bits"] - float(last["valid_loss"])
    return [f"{abs(gap):.2f} {'below' if gap >= 0 else 'above'} unigram"]


def main(argv):
    params = load_params()
    name = size_arg(argv, params.pretrain.sizes, "pretrain.sizes", "python -m stages.pretrain SIZE")
    if launch_data_parallel(params.training, "stages.pretrain", argv):  # training.world_size ranks did it
        return
    size = params.models.mlm[name]
    args, flops_of_batch = pretrain_args(params, name)
    train_and_export("pretrain", name, Path("models/pretrain") / name, args, flops_of_batch, keep="last",
                     summary={"size": name, **size.model_dump(), "non_embedding_parameters": non_embedding_params(size),
                              "budget": params.pretrain.recipe.budget.model_dump()}, more_facts=below_unigram)


if __name__ == "__main__":
    run_stage(main)
