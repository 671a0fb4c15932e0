"""What a task's objective and training data bound, for the size planner's law (lib/scaling.py), which assumes
neither: the least valid loss the objective allows, which the law's floor E is held above, and the tokens of
one epoch of the training split, past which a run sees its tokens again.

The floor: a fit on short runs, whose loss is still falling fast, otherwise puts E wherever extrapolating the
fall needs it, even below what any model could reach (issue 35's translation fit: E = 1.5e-10 bits). The masked
LM's cross-entropy has no floor above 0; translation's label-smoothed cross-entropy has one, fixed by its
smoothing and its dictionary. The epoch: the law (Hoffmann et al. 2022) counts every token as new; a repeated
one is worth less (Muennighoff et al. 2023), which calibration runs within one epoch cannot show."""
import json
import math

from lib.errors import StageError
from lib.recipes import MLM_DATA, MT_DATA


def label_smoothing_floor(epsilon: float, symbols: int) -> float:
    """The least label-smoothed cross-entropy a model can reach, in bits: fairseq's criterion
    (label_smoothed_nll_loss) is the cross-entropy against a target that puts 1 - epsilon on the reference
    token and epsilon / (symbols - 1) on each other symbol, so it cannot fall below that target's entropy,
    even on data with no uncertainty at all."""
    if epsilon <= 0:
        return 0.0
    return (-(1 - epsilon) * math.log2(1 - epsilon) - epsilon * math.log2(epsilon / (symbols - 1)))


def loss_floor(params, task: str) -> tuple:
    """(bits, why): the least valid loss `task`'s objective allows, which the law's E is held above. The masked
    LM's cross-entropy: 0. Translation's label-smoothed cross-entropy: the entropy of its smoothed target
    (label_smoothing_floor) over the target dictionary fairseq trains with."""
    if task != "mt" or params.train_mt.recipe.label_smoothing <= 0:
        return 0.0, "none (cross-entropy)"
    from fairseq.data import Dictionary

    path, epsilon = MT_DATA / f"dict.{params.data.translation.target}.txt", params.train_mt.recipe.label_smoothing
    if not path.exists():
        raise StageError(f"{path}: missing; translation's loss floor needs the target dictionary the runs trained "
                         "with (run `dvc repro prepare_mt`)")
    symbols = len(Dictionary.load(str(path)))
    return (label_smoothing_floor(epsilon, symbols),
            f"train_mt.recipe.label_smoothing {epsilon:g} over the {symbols} symbols of {path}")


def epoch_tokens(params, task: str) -> float:
    """The tokens of one epoch of `task`'s training split, about as the runs count them (lib/recipes.flops_of_batch):
    its sentencepiece pieces plus an end-of-sentence token per line (translation: per side of each pair), from the
    prepare stage's data/bin/<task>/caps.json. Batches add padding, which the runs also count: a few percent."""
    caps = (MLM_DATA if task == "mlm" else MT_DATA) / "caps.json"
    if not caps.exists():
        raise StageError(f"{caps}: missing; the plan counts epochs of the training split from it (run `dvc repro "
                         f"{'prepare_mlm' if task == 'mlm' else 'prepare_mt'}`)")
    counts = json.loads(caps.read_text())
    if task == "mlm":
        return float(counts["pieces"]["train"] + counts["lines"]["train"])
    tr = params.data.translation
    return float(counts["pieces"][f"train.{tr.source}"] + counts["pieces"][f"train.{tr.target}"]
                 + 2 * counts["pairs"]["train"])
