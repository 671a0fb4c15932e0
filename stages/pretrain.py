"""pretrain: RoBERTa masked-LM pretraining of one model size until its budget is spent.

fairseq's RoBERTa pretraining recipe (examples/roberta/README.pretraining.md) with the size from
params.yaml's `models.mlm` and the budget from `pretrain.budget`. Writes models/pretrain/<size>/
(checkpoint.pt without optimizer state, summary.json) and reports/curves/pretrain-<size>.csv.
An interrupted run resumes from models/.work/pretrain/<size>/ on the next `dvc repro`.

Usage: python -m stages.pretrain SIZE
"""
import shutil
from pathlib import Path

from stages.lib import (WORK_DIR, StageError, budget_flags, device_flags, export_checkpoint, load_params, log,
                        non_embedding_params, run_stage, schedule_flags, train_with_budget, write_json)

DATA = Path("data/bin/mlm")


def main(argv):
    params = load_params()
    if len(argv) != 1 or argv[0] not in params.pretrain.sizes:
        raise StageError(f"usage: python -m stages.pretrain SIZE, SIZE one of pretrain.sizes {params.pretrain.sizes}")
    name = argv[0]
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

    out = Path("models/pretrain") / name
    last = train_with_budget(f"pretrain {name}", WORK_DIR / "pretrain" / name, args,
                             Path("reports/curves") / f"pretrain-{name}.csv", flops_of_sample)
    work = WORK_DIR / "pretrain" / name
    params_count = export_checkpoint(work / "checkpoint_last.pt", out / "checkpoint.pt")
    write_json(out / "summary.json", {"size": name, **size.model_dump(), "parameters": params_count,
                                      "non_embedding_parameters": n, "budget": cfg.budget.model_dump(),
                                      "final": last})
    shutil.rmtree(work)
    log(f"pretrain {name}: done, {last['updates']} updates in {last['seconds']} s")


def size_flags(size, max_positions):
    return ["--encoder-layers", size.layers, "--encoder-embed-dim", size.hidden,
            "--encoder-ffn-embed-dim", size.ffn, "--encoder-attention-heads", size.heads,
            "--max-positions", max_positions]


if __name__ == "__main__":
    run_stage(main)
