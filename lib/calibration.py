"""Calibration runs of the size planner (issue 35): where they are written, the budget they train under,
and their curves (with the full-budget and check runs' where those exist) as the fit in lib/scaling.py reads
them, every point with the area and annealed share of its run's schedule (lib/lr_area.py).

A calibration run is a training stage's run (pretrain, train_mt) of one size under a fraction of its recipe's
budget: the linear schedule ends with that shorter budget, so its last curve point is a proper end point.
Files: reports/calibration/<stage>-<size>-<fraction>.csv (the curve) and .json (what ran where)."""
import json
from pathlib import Path

import numpy as np
import pandas as pd

from lib.errors import StageError
from lib.lr_area import curve_areas, end_area
from lib.model_size import model_non_embedding_params

CALIBRATION = Path("reports/calibration")
CURVES = Path("reports/curves")          # the full-budget runs' curves (stages pretrain, train_mt)
PLAN_JSON = Path("reports/plan.json")
# task -> (its training stage, its grid: models.<grid> and plan.<grid>_sizes, title)
TASKS = {"mlm": ("pretrain", "mlm", "Masked LM"), "mt": ("train_mt", "mt", "Translation")}


def candidates(params, task: str) -> list:
    """The sizes the plan calibrates for `task`: plan.mlm_sizes or plan.mt_sizes."""
    return getattr(params.plan, f"{TASKS[task][1]}_sizes")


def fraction_name(fraction: float) -> str:
    """A fraction as DVC writes it into a stage's command and output names (str of the float)."""
    return str(float(fraction))


def calibration_files(stage: str, name: str, fraction: float) -> tuple:
    stem = f"{stage}-{name}-{fraction_name(fraction)}"
    return CALIBRATION / f"{stem}.csv", CALIBRATION / f"{stem}.json"


def budget_unit(budget) -> tuple:
    """(unit, amount): "seconds" or "updates", whichever the budget sets."""
    return ("seconds", budget.seconds) if budget.seconds is not None else ("updates", budget.updates)


def scaled_warmup(warmup_updates: int, fraction: float) -> int:
    """The warm-up of a run at `fraction` of the budget: scaled down with it (rounded, at least 1), never up.

    A fixed warm-up takes a larger share of a shorter run (the recipe's 50 updates were 43% of L4-H384's 117 at
    x0.125, 6% of its full run's), which handicaps the short runs, steepens the fitted law and made every
    full-budget prediction too low (by 0.13-0.25 bits, docs/size-plan.md). Scaled, every calibration run spends
    the full run's share in warm-up. A run longer than the recipe's (a crossover check) keeps the recipe's warm-up,
    as a user training for that budget would."""
    if warmup_updates <= 0 or fraction >= 1:
        return warmup_updates
    return max(1, round(warmup_updates * fraction))


def scaled_params(params, task: str, fraction: float):
    """params with `task`'s recipe budget scaled by `fraction` (updates rounded, at least 1), its warm-up with it
    (scaled_warmup), and its curve points every plan.<grid>_validate_every updates where that is set."""
    stage, grid, _ = TASKS[task]
    section = getattr(params, stage)
    budget = section.recipe.budget
    scaled = budget.model_copy(update={"seconds": budget.seconds * fraction} if budget.seconds is not None
                               else {"updates": max(1, round(budget.updates * fraction))})
    recipe = section.recipe.model_copy(update={
        "budget": scaled, "warmup_updates": scaled_warmup(section.recipe.warmup_updates, fraction),
        "validate_every": getattr(params.plan, f"{grid}_validate_every") or section.recipe.validate_every})
    return params.model_copy(update={stage: section.model_copy(update={"recipe": recipe})})


def read_curve(curve: Path) -> pd.DataFrame:
    """A learning curve's points in update order."""
    rows = pd.read_csv(curve)
    if rows.empty:
        raise StageError(f"{curve}: no curve points")
    return rows.sort_values("updates", ignore_index=True)


def with_areas(rows: pd.DataFrame, recipe, fraction: float) -> pd.DataFrame:
    """A run's curve with each point's area (tokens weighted by the rate) and annealed share (lib/lr_area.py):
    the run's schedule is its recipe's, with the warm-up that a run at `fraction` of the budget had."""
    tokens_per_update = float(rows.tokens.iloc[-1] / rows.updates.iloc[-1])
    area, annealed = curve_areas(recipe.lr_schedule, scaled_warmup(recipe.warmup_updates, fraction),
                                 recipe.end_lr / recipe.lr, rows.updates, rows.lr / recipe.lr, tokens_per_update)
    return rows.assign(area=area, annealed=annealed, tokens_per_update=tokens_per_update)


def final_loss(law, size, budget, recipe):
    """The law's loss at the end of a run of `size` (its parameters, rate in tokens per budget unit and tokens per
    update) for `budget` (arrays welcome) under `recipe`'s schedule, with the warm-up a run of that budget has
    (scaled_warmup, as the calibration runs had)."""
    budget = np.asarray(budget, dtype=float)
    updates = size.rate * budget / size.tokens_per_update
    warmup = np.vectorize(scaled_warmup)(recipe.warmup_updates, budget / budget_unit(recipe.budget)[1])
    area, annealed = end_area(recipe.lr_schedule, updates, warmup, recipe.end_lr / recipe.lr)
    return law.loss(size.parameters, area * size.tokens_per_update, annealed)


def check_runs(stage: str, name: str, fractions: list) -> list:
    """(curve, "check", fraction) of every run of `name` in reports/calibration at a fraction not in `fractions`:
    runs made by hand (python -m stages.calibrate TASK SIZE FRACTION), which the plan compares with its
    prediction out of sample (a full budget at 1, a crossover past the calibrated budgets above it)."""
    prefix, calibrated, found = f"{stage}-{name}-", {calibration_files(stage, name, f)[0] for f in fractions}, []
    for path in sorted(set(CALIBRATION.glob(f"{prefix}*.csv")) - calibrated):
        try:
            found.append((path, "check", float(path.stem[len(prefix):])))
        except ValueError:  # another size whose name starts with this one's
            continue
    return found


def curve_points(params, task: str) -> pd.DataFrame:
    """One row per point of every run of `task`'s candidate sizes: the calibration runs of every plan.fractions
    (all required), the full-budget runs whose curves exist (source "full") and the check runs (source
    "check", check_runs); with the run's name, whether the point is its end, N, tokens, the budget unit's amount,
    the area and annealed share (with_areas), and loss."""
    stage, grid, _ = TASKS[task]
    recipe = getattr(params, stage).recipe
    unit, _ = budget_unit(recipe.budget)
    frames = []
    for name in candidates(params, task):
        n = model_non_embedding_params(getattr(params.models, grid)[name], grid)
        runs = [(calibration_files(stage, name, f)[0], "calibration", f) for f in params.plan.fractions]
        full = CURVES / f"{stage}-{name}.csv"
        runs += [(full, "full", 1.0)] if full.exists() else []
        runs += check_runs(stage, name, params.plan.fractions)
        for path, source, fraction in runs:
            if not path.exists():
                raise StageError(f"{path}: missing (run `dvc repro plan/dvc.yaml`, or `make plan`)")
            rows = with_areas(read_curve(path), recipe, fraction)
            frames.append(pd.DataFrame({
                "size": name, "source": source, "fraction": fraction, "run": path.stem,
                "end": rows.index == rows.index[-1], "parameters": n, "updates": rows.updates.astype(float),
                "tokens": rows.tokens.astype(float), "budget": rows[unit].astype(float), "area": rows.area,
                "annealed": rows.annealed, "tokens_per_update": rows.tokens_per_update,
                "loss": rows.valid_loss.astype(float)}))
    return pd.concat(frames, ignore_index=True)


def with_plan_note(verdict: tuple, path: Path = PLAN_JSON) -> tuple:
    """Claim (a)'s (claim, verdict, evidence) with the plan's crossovers added to the evidence, where a plan
    was made (`make plan`; the report does not require one, so it does not rerun when the plan changes)."""
    claim, outcome, evidence = verdict
    return claim, outcome, evidence + claim_a_note(path)


def claim_a_note(path: Path = PLAN_JSON) -> str:
    """A sentence for claim (a)'s verdict from the plan (reports/plan.json) where one was made, else ''."""
    if not path.exists():
        return ""
    mlm = json.loads(path.read_text()).get("mlm")
    if not mlm:
        return ""
    parts = []
    for pair in mlm["crossovers"]:
        found, (lo, hi) = pair["budget"], pair["interval"]
        parts.append(f"{pair['large']} over {pair['small']} " + (
            f"{'from' if pair['larger_better'] == 'above' else 'until'} {found:.3g} {mlm['unit']}"
            + (f" (95% interval {lo:.3g}-{hi:.3g})" if lo is not None else "") if found is not None else
            f"{pair['larger_better']} within {mlm['range'][0]:.3g}-{mlm['range'][1]:.3g} {mlm['unit']}"))
    if not parts:
        return ""
    sides, unit, (lo, hi) = {p["larger_better"] for p in mlm["crossovers"]}, mlm["unit"], mlm["range"]
    summary = (f"claim (a) would start to hold here at {max(p['budget'] for p in mlm['crossovers'] if p['budget'] is not None):.3g} {unit}"
               if sides <= {"above", "throughout"} and "above" in sides else
               f"claim (a) would hold at every budget in {lo:.3g}-{hi:.3g} {unit}" if sides == {"throughout"} else
               f"claim (a) would not hold at any budget in {lo:.3g}-{hi:.3g} {unit}")
    caveat = "; ".join(wrong_side(p) for p in mlm.get("check_pairs", []) if p["budget"]["agrees"] is False)
    return (f". The size plan (reports/plan.md, a scaling law fitted to calibration runs) predicts: {summary} "
            "(each larger size of a sweep ahead of the next smaller: " + "; ".join(parts) + ")" +
            (f"; but check runs disagree: {caveat}" if caveat else ""))


def wrong_side(pair: dict) -> str:
    """A check pair whose measured side the plan did not predict (at their budget), in words."""
    other = next(s for s in pair["sizes"] if s != pair["measured_lower"])
    predicted = pair["budget"]
    said = (f"a tie ({predicted['predicted_gap']:.2f} bits)" if predicted["tie"] else
            f"{predicted['predicted_lower']} lower by {predicted['predicted_gap']:.2f}")
    return (f"at x{pair['fraction']:g} of the budget {pair['measured_lower']} measured {pair['measured_gap']:.2f} "
            f"bits below {other}, where the plan predicted {said}")
