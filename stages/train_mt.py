"""train_mt: a pre-norm Transformer translation model of one size, trained until its budget is spent.

fairseq's translation recipe (examples/translation, lib/recipes.py: transformer with
--encoder/decoder-normalize-before), label-smoothed cross-entropy, shared embeddings over the joined
sentencepiece dictionary, and valid BLEU (sacrebleu via fairseq's --eval-bleu, greedy unless
train_mt.recipe.bleu_beam > 1) at every curve point. Keeps the best checkpoint by valid loss.

Writes models/mt/<size>/ (checkpoint.pt, summary.json) and reports/curves/train_mt-<size>.csv.

Usage: python -m stages.train_mt SIZE
"""
from pathlib import Path

from lib.devices import launch_data_parallel
from lib.harness import train_and_export
from lib.model_size import model_non_embedding_params
from lib.params import load_params, size_arg
from lib.recipes import translation_args
from lib.stage import run_stage


def main(argv):
    params = load_params()
    name = size_arg(argv, params.train_mt.sizes, "train_mt.sizes", "python -m stages.train_mt SIZE")
    if launch_data_parallel(params.training, "stages.train_mt", argv):  # training.world_size ranks did it
        return
    size, tr = params.models.mt[name], params.data.translation
    args, flops_of_batch = translation_args(params, name)
    train_and_export("train_mt", name, Path("models/mt") / name, args, flops_of_batch, keep="best",
                     summary={"size": name, **size.model_dump(),
                              "non_embedding_parameters": model_non_embedding_params(size, "mt"),
                              "source": tr.source, "target": tr.target,
                              "budget": params.train_mt.recipe.budget.model_dump()})


if __name__ == "__main__":
    run_stage(main)
