"""The fairseq recipes: the fairseq-train flags of each training stage (pretrain, finetune, train_mt), which
recovery fine-tuning after pruning (stages/compress.py) reuses, each with its FLOPs estimate of a batch.
Each recipe's values are params.yaml's `<stage>.recipe`."""
import json
from pathlib import Path

from lib.devices import device_flags
from lib.glue_task import GLUE_DATA, glue_meta
from lib.model_size import non_embedding_params

MLM_DATA, MT_DATA = Path("data/bin/mlm"), Path("data/bin/mt")
# translation length limit, max_len_a * source length + max_len_b tokens: valid BLEU, test BLEU and the
# ONNX models' generate() all stop there
MAX_LEN_A, MAX_LEN_B = 1.2, 10


def generation_args(beam: int):
    """fairseq's build_generator arguments for beam search to the length limit (stages/evaluate.py's test BLEU)."""
    import argparse
    return argparse.Namespace(beam=beam, max_len_a=MAX_LEN_A, max_len_b=MAX_LEN_B, min_len=1)


def budget_flags(budget) -> list:
    # fairseq counts training time restored from a checkpoint, so a resumed run keeps its budget
    if budget.updates is not None:
        return ["--max-update", budget.updates]
    return ["--stop-time-hours", budget.seconds / 3600]


def schedule_flags(recipe) -> list:
    """Optimizer and schedule shared by every training stage. `linear`: warm-up, then linear decay to
    end_lr when the budget is spent, in updates or seconds (lib/schedule.py); `inverse_sqrt` needs no
    budget at all (fairseq's translation recipe)."""
    schedule = ["--lr-scheduler", "budget_linear", "--end-learning-rate", recipe.end_lr] \
        if recipe.lr_schedule == "linear" else ["--lr-scheduler", "inverse_sqrt", "--warmup-init-lr", "1e-07"]
    return ["--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--adam-eps", "1e-06", "--clip-norm", "0.0",
            "--lr", recipe.lr, *schedule, "--warmup-updates", recipe.warmup_updates,
            "--dropout", recipe.dropout, "--attention-dropout", recipe.dropout,
            "--weight-decay", recipe.weight_decay, "--max-tokens", recipe.max_tokens,
            "--validate-interval-updates", recipe.validate_every, "--save-interval-updates", recipe.validate_every,
            "--max-valid-steps", recipe.valid_batches - 1,  # fairseq stops after index max_valid_steps
            "--validate-interval", 1_000_000, "--save-interval", 1_000_000,  # points on the update grid only
            "--keep-interval-updates", 1, "--no-epoch-checkpoints", "--log-format", "simple",
            "--log-interval", max(1, recipe.validate_every // 2)]


def flops_of_batch(n_encoder: int, n_decoder: int | None = None):
    """The training cost of a batch, ~6 N FLOPs per token for forward plus backward (Kaplan et al., 2020):
    a function of a fairseq sample returning (tokens, FLOPs). With a decoder, source tokens pass the
    encoder's N and target tokens the decoder's."""
    def count(sample):
        source = sample["net_input"]["src_tokens"].numel()
        if n_decoder is None:
            return source, 6.0 * n_encoder * source
        target = sample["target"].numel()
        return source + target, 6.0 * (n_encoder * source + n_decoder * target)
    return count


def encoder_flags(size, max_positions: int) -> list:
    """A RoBERTa encoder of `size` (models.mlm)."""
    return ["--encoder-layers", size.layers, "--encoder-embed-dim", size.hidden,
            "--encoder-ffn-embed-dim", size.ffn, "--encoder-attention-heads", size.heads,
            "--max-positions", max_positions]


def pretrain_args(params, name: str):
    """fairseq's RoBERTa pretraining recipe (examples/roberta/README.pretraining.md) for size `name`."""
    size, recipe = params.models.mlm[name], params.pretrain.recipe
    args = [MLM_DATA, "--task", "masked_lm", "--criterion", "masked_lm", "--arch", "roberta",
            *encoder_flags(size, recipe.tokens_per_sample),
            "--sample-break-mode", "none", "--tokens-per-sample", recipe.tokens_per_sample,
            "--mask-prob", recipe.mask_prob, "--seed", params.training.seed,
            *schedule_flags(recipe), *budget_flags(recipe.budget), *device_flags(params.training)]
    return args, flops_of_batch(non_embedding_params(size))


def finetune_args(params, name: str, task: str, init: Path | str | None = None, budget=None):
    """fairseq's RoBERTa GLUE recipe (examples/roberta/README.glue.md): size `name` on `task` from `init`
    (default: the size's pretrained checkpoint; "random": no checkpoint) under `budget` (default:
    finetune.recipe.budget); keeps the best checkpoint by dev accuracy (by loss for regression)."""
    size, recipe = params.models.mlm[name], params.finetune.recipe
    data, meta = GLUE_DATA / task, glue_meta(task)
    metric = ["--regression-target", "--best-checkpoint-metric", "loss"] if meta["regression"] else \
        ["--best-checkpoint-metric", "accuracy", "--maximize-best-checkpoint-metric"]
    init = init or Path("models/pretrain") / name / "checkpoint.pt"
    args = [data, "--task", "sentence_prediction", "--criterion", "sentence_prediction",
            *([] if init == "random" else ["--finetune-from-model", init]),
            "--arch", "roberta", *encoder_flags(size, params.pretrain.recipe.tokens_per_sample),
            "--num-classes", meta["num_classes"], "--init-token", 0, "--separator-token", 2,
            "--shorten-method", "truncate", "--batch-size", recipe.batch_size,
            "--required-batch-size-multiple", 1, *metric, "--seed", params.training.seed,
            *schedule_flags(recipe), *budget_flags(budget or recipe.budget), *device_flags(params.training)]
    return args, flops_of_batch(non_embedding_params(size))


def translation_args(params, name: str, init: Path | None = None, budget=None, bleu: bool = True):
    """fairseq's translation recipe (examples/translation) for size `name`: a pre-norm Transformer,
    label-smoothed cross-entropy, embeddings shared over the joined dictionary, valid BLEU at every point
    (greedy unless bleu_beam > 1; not with bleu False: loss only); from scratch or from the weights of `init`,
    under `budget` (default: train_mt.recipe.budget)."""
    size, recipe, tr = params.models.mt[name], params.train_mt.recipe, params.data.translation
    bleu_args = json.dumps({"beam": recipe.bleu_beam, "max_len_a": MAX_LEN_A, "max_len_b": MAX_LEN_B})
    args = [MT_DATA, "--task", "translation", "--source-lang", tr.source, "--target-lang", tr.target,
            "--arch", "transformer", "--share-all-embeddings",
            "--encoder-normalize-before", "--decoder-normalize-before",
            "--encoder-layers", size.layers, "--decoder-layers", size.layers,
            "--encoder-embed-dim", size.hidden, "--decoder-embed-dim", size.hidden,
            "--encoder-ffn-embed-dim", size.ffn, "--decoder-ffn-embed-dim", size.ffn,
            "--encoder-attention-heads", size.heads, "--decoder-attention-heads", size.heads,
            "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", recipe.label_smoothing,
            *(["--eval-bleu", "--eval-bleu-args", bleu_args, "--eval-bleu-detok", "space",
               "--eval-bleu-remove-bpe", "sentencepiece"] if bleu else []), "--seed", params.training.seed,
            *schedule_flags(recipe), *budget_flags(budget or recipe.budget), *device_flags(params.training),
            *(["--finetune-from-model", init] if init else [])]
    return args, flops_of_batch(non_embedding_params(size), non_embedding_params(size, decoder=True))
