"""calibrate: one calibration run of the size planner, a training stage's run under a fraction of its budget.

The run is the training stage's own (pretrain: lib/recipes.pretrain_args; train_mt: translation_args; the
harness lib/harness.train_with_budget) with the recipe's budget, seconds or updates, times FRACTION, so its
linear schedule ends with that shorter budget and its last curve point is a proper end point of the scaling
law (lib/scaling.py); its curve has a point every plan.<task>_validate_every updates where that is set (the
recipe's validate_every where null), translation's without BLEU. Only the curve is kept:
reports/calibration/<stage>-<size>-<fraction>.csv, and .json with what ran where; the checkpoints live in
models/.work/calibrate/ (apart from the full run's resumable state, so the two never collide) while it runs,
and an interrupted run resumes there.

Not part of `dvc repro`: its stages are plan/dvc.yaml's (`make plan`), at plan.fractions (below 1). By hand, a
FRACTION above 1 trains a longer run without touching the full run's outputs, e.g. to check a crossover.

Usage: python -m stages.calibrate mlm|mt SIZE FRACTION
"""
import shutil

from lib.calibration import TASKS, budget_unit, calibration_files, candidates, fraction_name, scaled_params
from lib.devices import distributed_rank, launch_data_parallel, trained_on, trained_precision
from lib.errors import StageError, log
from lib.files import write_json
from lib.harness import WORK_DIR, train_with_budget
from lib.model_size import model_non_embedding_params
from lib.params import load_params, size_arg
from lib.recipes import pretrain_args, translation_args
from lib.stage import run_stage

USAGE = "python -m stages.calibrate mlm|mt SIZE FRACTION"
# translation validates its loss only: the plan predicts no BLEU, and greedy decoding at every point would
# spend the short runs' budget on it
ARGS = {"mlm": pretrain_args, "mt": lambda params, name: translation_args(params, name, bleu=False)}


def main(argv):
    params = load_params()
    if len(argv) != 3 or argv[0] not in TASKS:
        raise StageError(f"usage: {USAGE}")
    task, fraction = argv[0], argv[2]
    stage, grid, _ = TASKS[task]
    name = size_arg(argv[1:2], candidates(params, task), f"plan.{grid}_sizes", USAGE)
    try:
        fraction = float(fraction)
    except ValueError:
        fraction = -1.0
    if not fraction > 0:  # above 1 by hand: a longer run beside the full one, e.g. to check a crossover
        raise StageError(f"usage: {USAGE}, FRACTION a positive number (the share of the recipe's budget)")
    if launch_data_parallel(params.training, "stages.calibrate", argv):  # training.world_size ranks did it
        return
    scaled = scaled_params(params, task, fraction)
    args, flops_of_batch = ARGS[task](scaled, name)
    curve, summary = calibration_files(stage, name, fraction)
    label, work = f"calibrate {stage} {name} x{fraction_name(fraction)}", WORK_DIR / "calibrate" / summary.stem
    last = train_with_budget(label, work, args, curve, flops_of_batch)
    if distributed_rank() != 0:  # rank 0 writes the outputs
        return
    unit, amount = budget_unit(getattr(scaled, stage).recipe.budget)
    write_json(summary, {"size": name, "task": task, "fraction": fraction, "budget": {unit: amount},
                         "non_embedding_parameters": model_non_embedding_params(getattr(params.models, grid)[name],
                                                                                grid),
                         "final": last, "precision": trained_precision(args), "hardware": trained_on(args)})
    shutil.rmtree(work)
    log(f"{label}: done, {last['updates']} updates in {last['seconds']} s")


if __name__ == "__main__":
    run_stage(main)
