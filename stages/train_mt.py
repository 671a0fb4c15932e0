"""train_mt: a pre-norm Transformer translation model of one size, trained until its budget is spent.

fairseq's translation recipe (examples/translation, transformer with --encoder/decoder-normalize-before),
label-smoothed cross-entropy, shared embeddings over the joined sentencepiece dictionary, and valid BLEU
(sacrebleu via fairseq's --eval-bleu, greedy unless train_mt.bleu_beam > 1) at every curve point.
Keeps the best checkpoint by valid loss.

Writes models/mt/<size>/ (checkpoint.pt, summary.json) and reports/curves/train_mt-<size>.csv.

Usage: python -m stages.train_mt SIZE
"""
import json
from pathlib import Path

from stages.lib import (budget_flags, device_flags, launch_data_parallel, load_params, model_non_embedding_params,
                        non_embedding_params, run_stage, schedule_flags, size_arg, train_and_export)

DATA = Path("data/bin/mt")


def main(argv):
    params = load_params()
    name = size_arg(argv, params.train_mt.sizes, "train_mt.sizes", "python -m stages.train_mt SIZE")
    if launch_data_parallel(params.training, "stages.train_mt", argv):  # training.world_size ranks did it
        return
    size, cfg, tr = params.models.mt[name], params.train_mt, params.data.translation
    args, flops_of_sample = training_args(params, name)
    train_and_export("train_mt", name, Path("models/mt") / name, args, flops_of_sample, keep="best",
                     summary={"size": name, **size.model_dump(),
                              "non_embedding_parameters": model_non_embedding_params(size, "mt"),
                              "source": tr.source, "target": tr.target, "budget": cfg.budget.model_dump()})


def training_args(params, name: str, init: Path | None = None, budget=None):
    """fairseq-train flags that train translation size `name` (from scratch, or from the weights of
    `init`) under `budget` (default: train_mt.budget), and the FLOPs estimate of a batch. Also the
    recipe of recovery fine-tuning after pruning (stages/compress.py)."""
    size, cfg, tr = params.models.mt[name], params.train_mt, params.data.translation
    bleu_args = json.dumps({"beam": cfg.bleu_beam, "max_len_a": 1.2, "max_len_b": 10})
    args = [DATA, "--task", "translation", "--source-lang", tr.source, "--target-lang", tr.target,
            "--arch", "transformer", "--share-all-embeddings",
            "--encoder-normalize-before", "--decoder-normalize-before",
            "--encoder-layers", size.layers, "--decoder-layers", size.layers,
            "--encoder-embed-dim", size.hidden, "--decoder-embed-dim", size.hidden,
            "--encoder-ffn-embed-dim", size.ffn, "--decoder-ffn-embed-dim", size.ffn,
            "--encoder-attention-heads", size.heads, "--decoder-attention-heads", size.heads,
            "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", cfg.label_smoothing,
            "--eval-bleu", "--eval-bleu-args", bleu_args, "--eval-bleu-detok", "space",
            "--eval-bleu-remove-bpe", "sentencepiece", "--seed", params.training.seed,
            *schedule_flags(cfg), *budget_flags(budget or cfg.budget), *device_flags(params.training),
            *(["--finetune-from-model", init] if init else [])]
    n_encoder, n_decoder = non_embedding_params(size), non_embedding_params(size, decoder=True)

    def flops_of_sample(sample):
        source, target = sample["net_input"]["src_tokens"].numel(), sample["target"].numel()
        return source + target, 6.0 * (n_encoder * source + n_decoder * target)

    return args, flops_of_sample


if __name__ == "__main__":
    run_stage(main)
