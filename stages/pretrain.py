"""pretrain: RoBERTa masked-LM pretraining of one model size until its budget is spent.

fairseq's RoBERTa pretraining recipe (examples/roberta/README.pretraining.md) with the size from
params.yaml's `models.mlm` and the budget from `pretrain.budget`. Writes models/pretrain/<size>/
(checkpoint.pt without optimizer state, summary.json) and reports/curves/pretrain-<size>.csv.
An interrupted run resumes from models/.work/pretrain/<size>/ on the next `dvc repro`.

Usage: python -m stages.pretrain SIZE
"""
from pathlib import Path

from stages.lib import (budget_flags, device_flags, launch_data_parallel, load_params, non_embedding_params,
                        run_stage, schedule_flags, size_arg, train_and_export)

DATA = Path("data/bin/mlm")


def main(argv):
    params = load_params()
    name = size_arg(argv, params.pretrain.sizes, "pretrain.sizes", "python -m stages.pretrain SIZE")
    if launch_data_parallel(params.training, "stages.pretrain", argv):  # training.world_size ranks did it
        return
    size, cfg = params.models.mlm[name], params.pretrain
    args = [DATA, "--task", "masked_lm", "--criterion", "masked_lm", "--arch", "roberta",
            *size_flags(size, cfg.tokens_per_sample),
            "--sample-break-mode", "none", "--tokens-per-sample", cfg.tokens_per_sample,
            "--mask-prob", cfg.mask_prob, "--seed", params.training.seed,
            *schedule_flags(cfg), *budget_flags(cfg.budget), *device_flags(params.training)]
    n = non_embedding_params(size)

    def flops_of_sample(sample):  # ~6 N FLOPs per token for forward + backward (Kaplan et al., 2020)
        tokens = sample["net_input"]["src_tokens"].numel()
        return tokens, 6.0 * n * tokens

    train_and_export("pretrain", name, Path("models/pretrain") / name, args, flops_of_sample, keep="last",
                     summary={"size": name, **size.model_dump(), "non_embedding_parameters": n,
                              "budget": cfg.budget.model_dump()})


def size_flags(size, max_positions):
    return ["--encoder-layers", size.layers, "--encoder-embed-dim", size.hidden,
            "--encoder-ffn-embed-dim", size.ffn, "--encoder-attention-heads", size.heads,
            "--max-positions", max_positions]


if __name__ == "__main__":
    run_stage(main)
