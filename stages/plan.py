"""plan: which size for a budget, predicted from the calibration runs (issue 35).

Per task (masked LM, translation) fits L(N, S, a) = E + A / N^alpha + B / S^beta - C a (lib/scaling.py; E held
above the objective's floor, lib/objective.py) to every point of the calibration runs' curves (reports/calibration/,
stages/calibrate.py; plus the full-budget runs' when plan.fit_full_runs), S and a from each run's schedule
(lib/lr_area.py), with a bootstrap over the runs; maps a budget to the end of a run with each size's measured rate
(tokens per second, or per update, from its calibration runs); and predicts each size's final valid loss at the
target budget, the best size, and for adjacent sizes of the depth and the width sweep the budget where the larger
overtakes the smaller, with the epochs of the training split each run would train (lib/objective.py). Where
full-budget curves exist (reports/curves/), and for the check runs, compares them with the prediction. Writes
reports/plan.md (its text: lib/plan_markdown.py), reports/plan.json and reports/plan.png.

Usage: python -m stages.plan
"""
import json
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from lib.calibration import PLAN_JSON, TASKS, budget_unit, candidates, curve_points, final_loss
from lib.errors import log
from lib.figures import colors_of, figure_legend, log_axis, plt, sns
from lib.objective import epoch_tokens, loss_floor
from lib.params import load_params
from lib.plan_checks import check_pairs, compared, ranking
from lib.plan_markdown import markdown
from lib.scaling import NAMES, bootstrap_laws, crossover, fit_law, free_parameters, interval
from lib.stage import run_stage
from lib.verdicts import sweeps

PLAN_MD, PLAN_PNG = Path("reports/plan.md"), Path("reports/plan.png")
MARKERS = {"calibration": ("o", 18), "full": ("*", 40), "check": ("D", 22)}  # end points in the figure


def main(argv):
    params = load_params()
    plans = {task: plan_task(params, task) for task in TASKS}
    PLAN_JSON.write_text(json.dumps(plans, indent=2, default=float) + "\n")
    draw(plans)
    PLAN_MD.write_text(markdown(plans, params))
    log(f"wrote {PLAN_MD}, {PLAN_JSON} and {PLAN_PNG}")


def plan_task(params, task: str) -> dict:
    cfg, (stage, grid, title) = params.plan, TASKS[task]
    recipe = getattr(params, stage).recipe
    unit, budget = budget_unit(recipe.budget)
    target = cfg.target_budget or budget
    fixed = {"alpha": cfg.fix_alpha, "beta": cfg.fix_beta}
    curve = curve_points(params, task)
    points = curve[curve.end]  # each run's end: what is predicted, compared and drawn
    calibration = points[points.source == "calibration"]
    fitted = curve[curve.source.isin(("calibration", "full") if cfg.fit_full_runs else ("calibration",))]
    sums = calibration.groupby("size")[["tokens", "budget", "updates"]].sum()
    longest = calibration.groupby("size").tokens.max()  # how far a prediction reaches: tokens / longest run's
    epoch = epoch_tokens(params, task)  # past it a run sees its tokens again, which the law does not model
    models = getattr(params.models, grid)
    sizes = pd.DataFrame([{"size": s, "layers": models[s].layers, "hidden": models[s].hidden,
                           "parameters": int(points[points["size"] == s].parameters.iloc[0]),
                           "rate": float(sums.tokens[s] / sums.budget[s]),
                           "tokens_per_update": float(sums.tokens[s] / sums.updates[s])}
                          for s in candidates(params, task)]).sort_values("parameters", ignore_index=True)
    columns = [fitted[c].to_numpy(float) for c in ("parameters", "area", "annealed", "loss")]
    floor, floor_why = loss_floor(params, task)
    law = fit_law(*columns, fixed=fixed, floor=floor)
    laws = bootstrap_laws(*columns, fitted.run.to_numpy(), cfg.bootstrap, fixed=fixed, start=law,
                          seed=params.training.seed, floor=floor)
    final = partial(final_loss, recipe=recipe)  # final(law, size, budget): the loss at the end of a run of that budget
    boot_losses = np.array([[float(final(b, s, target)) for s in sizes.itertuples()] for b in laws])
    best_share = np.bincount(boot_losses.argmin(axis=1), minlength=len(sizes)) / len(laws)
    predictions = []
    for i, s in enumerate(sizes.itertuples()):
        full = points[(points["size"] == s.size) & (points.source == "full")]
        row = {"size": s.size, "parameters": s.parameters, "rate": s.rate, "tokens": s.rate * target,
               "reach": s.rate * target / longest[s.size], "epochs": s.rate * target / epoch,
               "calibrated_epochs": longest[s.size] / epoch, "loss": float(final(law, s, target)),
               "interval": interval(boot_losses[:, i]), "best_share": float(best_share[i])}
        if len(full):  # the full run's own end: at its budget by the calibration's rate, and at its own tokens
            row["full"] = compared(law, s, full.iloc[0], longest[s.size], final)
        predictions.append(row)
    by_size = sizes.set_index("size")
    checks = [{"size": c.size, "fraction": c.fraction, "epochs": c.tokens / epoch,
               **compared(law, by_size.loc[c.size], c, longest[c.size], final)}
              for c in points[points.source == "check"].itertuples()]
    lo, hi = cfg.crossover_range
    crossovers = []
    for sweep, names in sweeps(sizes).items():
        for small, large in zip(names, names[1:]):
            a, b = (by_size.loc[n] for n in (small, large))
            found = crossover(lambda t: final(law, b, t) - final(law, a, t), lo, hi)
            boot = [crossover(lambda t, w=w: final(w, b, t) - final(w, a, t), lo, hi) for w in laws]
            same = [c["budget"] for c in boot if c["larger_better"] == found["larger_better"]]
            crossovers.append({"sweep": sweep, "small": small, "large": large, **found,
                               "interval": interval(same if found["budget"] is not None else []),
                               "agreeing_share": len(same) / len(boot)})
    return {"title": title, "stage": stage, "schedule": recipe.lr_schedule, "unit": unit, "budget": budget,
            "target": target, "range": [lo, hi], "epoch_tokens": epoch,
            "points": points.drop(columns="end").to_dict("records"), "fitted_points": len(fitted),
            "fitted_runs": int(fitted.run.nunique()),
            "free_parameters": free_parameters(fixed), "fixed": {k: v for k, v in fixed.items() if v is not None},
            "floor": {"bits": floor, "why": floor_why}, "law": law.as_dict(),
            "law_interval": {k: interval([getattr(b, k) for b in laws]) for k in NAMES},
            "predictions": predictions, "best": sizes["size"][int(np.argmin([p["loss"] for p in predictions]))],
            "crossovers": crossovers, "ranking": ranking(predictions, params.report.loss_tolerance),
            "checks": checks, "check_pairs": check_pairs(checks, params.report.loss_tolerance),
            "curves": curves(final, law, laws, sizes, points, [target, *(x["budget"] or 0 for x in crossovers)],
                             lo, hi)}


def curves(final, law, laws, sizes, points, marks: list, lo, hi) -> dict:
    """Predicted loss against budget per size, with its bootstrap band, from the calibration runs to past
    the `marks` (target budget, crossovers)."""
    span = [points.budget.min() / 2, max(points.budget.max(), *marks) * 4]
    grid = np.geomspace(max(lo, span[0]), min(hi, span[1]), 60)
    out = {}
    for s in sizes.itertuples():
        boot = np.array([final(b, s, grid) for b in laws])
        out[s.size] = {"budget": grid.tolist(), "loss": final(law, s, grid).tolist(),
                       "low": np.percentile(boot, 2.5, axis=0).tolist(),
                       "high": np.percentile(boot, 97.5, axis=0).tolist()}
    return out


def draw(plans: dict) -> None:
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(1, len(plans), figsize=(5.4 * len(plans), 4.0), squeeze=False)
    for ax, plan in zip(axes[0], plans.values()):
        order = [p["size"] for p in sorted(plan["predictions"], key=lambda p: p["parameters"])]
        colors = colors_of(order)
        for name in order:
            c, color = plan["curves"][name], colors[name]
            ax.plot(c["budget"], c["loss"], color=color, label=name)
            ax.fill_between(c["budget"], c["low"], c["high"], color=color, alpha=0.12)
            for p in plan["points"]:
                if p["size"] == name:
                    marker, size = MARKERS[p["source"]]
                    ax.scatter(p["budget"], p["loss"], color=color, zorder=3, s=size, marker=marker,
                               edgecolor="black", linewidth=0.4)
        for source in sorted({p["source"] for p in plan["points"]}, key=list(MARKERS).index):
            ax.scatter([], [], marker=MARKERS[source][0], color="grey", label=f"{source} run (measured)")
        ax.axvline(plan["target"], color="grey", linestyle="--", linewidth=1, label="target budget")
        for x in plan["crossovers"]:
            if x["budget"] is not None:
                ax.axvline(x["budget"], color="black", linestyle=":", linewidth=1)
                ax.annotate(f"{x['large']} > {x['small']}" if x["larger_better"] == "above" else
                            f"{x['small']} > {x['large']}", (x["budget"], 0.97), xycoords=("data", "axes fraction"),
                            rotation=90, ha="right", va="top", fontsize=6)
        seen = [*(v for c in plan["curves"].values() for v in c["loss"]), *(p["loss"] for p in plan["points"])]
        ax.set_ylim(min(seen) - 0.05 * np.ptp(seen), max(seen) + 0.05 * np.ptp(seen))  # bands may run off
        ax.set(xscale="log", xlabel=f"training budget ({plan['unit']}; log scale)",
               ylabel="predicted final valid loss (bits)", title=plan["title"])
        log_axis(ax, "x")
    figure_legend(fig, axes[0], "size", list(dict.fromkeys(p["size"] for plan in plans.values()
                                                           for p in plan["predictions"])))
    fig.tight_layout()
    fig.savefig(PLAN_PNG, dpi=130, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    run_stage(main)
