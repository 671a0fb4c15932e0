"""plan: which size for a budget, predicted from the calibration runs (issue 35).

Per task (masked LM, translation) fits L(N, S, a) = E + A / N^alpha + B / S^beta - C a (lib/scaling.py; E held
above the objective's floor, lib/objective.py) to every point of the calibration runs' curves (reports/calibration/,
stages/calibrate.py; plus the full-budget runs' when plan.fit_full_runs), S and a from each run's schedule
(lib/lr_area.py), with a bootstrap over the runs; maps a budget to the end of a run with each size's measured rate
(tokens per second, or per update, from its calibration runs); and predicts each size's final valid loss at the
target budget, the best size, and for adjacent sizes of the depth and the width sweep the budget where the larger
overtakes the smaller. Where full-budget curves exist (reports/curves/), and for the check runs, compares them
with the prediction. Writes reports/plan.md, reports/plan.json and reports/plan.png.

Usage: python -m stages.plan
"""
import json
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from lib.calibration import PLAN_JSON, TASKS, budget_unit, candidates, curve_points, final_loss
from lib.errors import log
from lib.figures import colors_of, figure_legend, log_axis, plt, sns, table
from lib.params import load_params
from lib.objective import loss_floor
from lib.plan_checks import check_pairs, compared, ranking
from lib.scaling import NAMES, bootstrap_laws, crossover, fit_law, free_parameters, interval
from lib.stage import run_stage
from lib.verdicts import sweeps

PLAN_MD, PLAN_PNG = Path("reports/plan.md"), Path("reports/plan.png")
TARGET_ERROR = {"mlm": 0.05, "mt": 0.1}  # bits: issue 35's targets for the predicted full-budget loss
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
               "reach": s.rate * target / longest[s.size],
               "loss": float(final(law, s, target)), "interval": interval(boot_losses[:, i]),
               "best_share": float(best_share[i])}
        if len(full):  # the full run's own end: at its budget by the calibration's rate, and at its own tokens
            row["full"] = compared(law, s, full.iloc[0], longest[s.size], final)
        predictions.append(row)
    by_size = sizes.set_index("size")
    checks = [{"size": c.size, "fraction": c.fraction,
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
            "target": target, "range": [lo, hi],
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


def span(values, digits=3) -> str:
    lo, hi = values
    return "n/a" if lo is None else f"[{lo:.{digits}g}, {hi:.{digits}g}]"


def markdown(plans: dict, params) -> str:
    sections = ["# Size plan: which size for a budget, predicted from calibration runs\n\n"
                f"![plan](plan.png)\n\nEach task's calibration runs trained every size at "
                f"{', '.join(f'{f:g}' for f in params.plan.fractions)} of its recipe's budget, the linear schedule "
                "ending with each run's budget, so each run's last point is a proper end point. The law L(N, S, a) = E"
                " + A / N^alpha + B / S^beta - C a is fitted to every point of their curves: N the non-embedding "
                "parameters, S the area (the tokens trained so far, each weighted by its learning rate over the peak),"
                " a the annealed share (how much of the peak rate the decay has taken off). It is Hoffmann et al. "
                "2022's L(N, D) (approach 3: Huber loss on log loss) with the annealing term of Tissue et al. 2024 "
                "(momentum 0): at every run's end S is a fixed share of its tokens D and a the same, so on end points "
                "alone it is Hoffmann's law; with it a run's whole curve informs the fit, not only its end. It is "
                "fitted in tokens, which do not depend on the machine's speed; a budget maps to tokens with each "
                "size's measured rate. So a calibration on one machine and a prediction for another differ only by "
                "that throughput table: rerun the calibration (or only measure the rates) there. Intervals are 95% "
                "bootstrap intervals over resampled runs (whole curves; the rates held fixed). Validation loss only: "
                "BLEU is not predicted (it has no such law in N and D, and too few points)."]
    for task, plan in plans.items():
        sections.append(task_section(task, plan))
    return "\n\n".join(sections) + "\n"


def task_section(task: str, plan: dict) -> str:
    unit, law, dof = plan["unit"], plan["law"], plan["fitted_runs"] - plan["free_parameters"]
    fixed = ", ".join(f"{k} held at {v:g}" for k, v in plan["fixed"].items())
    params = pd.DataFrame([{"parameter": k, "value": law[k], "95% interval": span(plan["law_interval"][k])}
                           for k in NAMES])
    caution = (" **Few degrees of freedom: the law is poorly determined**, its parameters trade off against "
               "each other (see their intervals) and only its predictions near the calibrated budgets are firm; "
               "add fractions, hold beta (plan.fix_beta), or fit the full-budget runs too (plan.fit_full_runs)."
               if dof <= 3 else "")
    if plan["schedule"] != "linear":
        caution += (f" **The recipe's schedule is {plan['schedule']}, which does not end with the budget**: a short "
                    "run is the start of a long one; the law follows its rate through the area and the annealed "
                    "share, which no run of this schedule has checked here.")
    rows = []
    for p in plan["predictions"]:
        full = p.get("full", {})
        rows.append({"size": p["size"], "non-embedding params": p["parameters"],
                     f"tokens/{unit[:-1]}": round(p["rate"]),
                     f"predicted loss at {plan['target']:g} {unit}": p["loss"], "95% interval": span(p["interval"], 4),
                     "reach": f"{p['reach']:.2g}x",
                     "best in resamples": f"{p['best_share']:.0%}", "full run: measured": full.get("measured", ""),
                     "predicted at its tokens": full.get("predicted_at_tokens", ""),
                     "error at its tokens (bits)": full.get("error_at_tokens", ""),
                     f"predicted at its {unit}": full.get("predicted", ""),
                     f"error at its {unit} (bits)": full.get("error", "")})
    crossings = pd.DataFrame([{"sweep": x["sweep"], "smaller": x["small"], "larger": x["large"],
                               f"larger wins from ({unit})": crossover_cell(x, plan),
                               "95% interval": span(x["interval"]),
                               "resamples agreeing": f"{x['agreeing_share']:.0%}"} for x in plan["crossovers"]])
    calibration = sum(q["budget"] for q in plan["points"] if q["source"] == "calibration")
    in_sample = plan["fitted_runs"] > sum(q["source"] == "calibration" for q in plan["points"])
    law_line = (f"**L(N, S, a) = {law['E']:.4g} + {law['A']:.4g} / N^{law['alpha']:.3g} + {law['B']:.4g} / "
                f"S^{law['beta']:.3g} - {law['C']:.3g} a** (bits; N non-embedding parameters, S the area in "
                f"tokens, a the annealed share), fitted to the {plan['fitted_points']} points of the "
                f"{plan['fitted_runs']} {'calibration and full-budget' if in_sample else 'calibration'} runs' "
                f"curves with {plan['free_parameters']} free parameters{' (' + fixed + ')' if fixed else ''}: "
                f"{dof} degree{'' if dof == 1 else 's'} of freedom counted in runs." +
                (f" E is held at or above {plan['floor']['bits']:.4g} bits, the least loss the objective allows "
                 f"({plan['floor']['why']})." if plan["floor"]["bits"] > 0 else ""))
    return (f"## {plan['title']} ({plan['stage']})\n\n{law_line}{caution}\n\n" + table(params) +
            f"\n\n**Predicted best size at {plan['target']:g} {unit}: {plan['best']}.** Tokens per "
            f"{unit[:-1]} are measured in the calibration runs.\n\n" + table(pd.DataFrame(rows)) + "\n\n" +
            full_run_errors(task, plan, in_sample) + check_section(task, plan) +
            "\n\nCrossovers: the budget past which the larger of two adjacent sizes of a sweep is predicted to "
            "reach the lower final loss.\n\n" +
            (table(crossings) if len(crossings) else "none") +
            f"\n\nCalibration cost: {calibration:.4g} {unit} of training, "
            f"{calibration / (len(plan['predictions']) * plan['budget']):.0%} of training every size for its full "
            f"budget of {plan['budget']:g} {unit}.")


def check_section(task: str, plan: dict) -> str:
    """The check runs (by hand, at fractions not calibrated) against the prediction: out of sample; those of the
    full budget (x1) also against issue 35's target, with the margin."""
    if not plan["checks"]:
        return ""
    target = TARGET_ERROR[task]
    margins = [f"{c['size']} {c['error_at_tokens']:+.3f} (" + (f"met by {target - abs(c['error_at_tokens']):.3f}"
               if abs(c["error_at_tokens"]) <= target else f"missed by {abs(c['error_at_tokens']) - target:.3f}") + ")"
               for c in plan["checks"] if c["fraction"] == 1]
    unit = plan["unit"]
    rows = pd.DataFrame([{"size": c["size"], "fraction of the budget": f"{c['fraction']:g}",
                          unit: round(c["budget"], 1), "tokens": int(c["tokens"]), "reach": f"{c['reach']:.2g}x",
                          "measured (bits)": c["measured"], "predicted at its tokens": c["predicted_at_tokens"],
                          "error at its tokens (bits)": c["error_at_tokens"],
                          f"error at its {unit} (bits)": c["error"]} for c in plan["checks"]])
    def side(pair, basis, where):
        q = pair[basis]
        verdict = ("no verdict (a measured tie)" if q["agrees"] is None else "agrees" if q["agrees"] else
                   "**disagrees**" + (" (predicted a tie)" if q["tie"] else ""))
        return f"{q['predicted_lower']} lower by {q['predicted_gap']:.3f} at their {where}: {verdict}"

    lines = [f"at x{p['fraction']:g}, {' and '.join(p['sizes'])}: measured {p['measured_lower']} lower by "
             f"{p['measured_gap']:.3f} bits; predicted {side(p, 'tokens', 'own tokens')}; "
             f"{side(p, 'budget', unit + ' by the calibration rates')}" for p in plan["check_pairs"]]
    return ("\n\nCheck runs, out of sample: runs made by hand at a fraction of the budget that is not calibrated "
            "(`python -m stages.calibrate TASK SIZE FRACTION`; reports/calibration/), compared with the prediction "
            f"at their own tokens (reach: their tokens over the size's longest calibration run's).\n\n" + table(rows) +
            (f"\n\nAt the full budget (x1), against issue 35's target of {target} bits at their own tokens: "
             f"{', '.join(margins)}." if margins else "") +
            ("\n\nSides of the sizes checked at the same fraction (a tie: within the report's "
             f"{plan['ranking']['tolerance']} bits):\n\n" + "\n".join(f"- {line}" for line in lines) if lines else ""))


def crossover_cell(x: dict, plan: dict) -> str:
    if x["budget"] is None:
        return f"{x['larger_better']} within {plan['range'][0]:g}-{plan['range'][1]:g}"
    return f"{x['budget']:.4g}" if x["larger_better"] == "above" else f"until {x['budget']:.4g}"


def full_run_errors(task: str, plan: dict, in_sample: bool) -> str:
    """The prediction error of each full-budget run, and whether the predicted order is the measured one."""
    errors = [p for p in plan["predictions"] if "full" in p]
    if not errors:
        return "No full-budget run to compare with yet."
    met = all(abs(p["full"]["error_at_tokens"]) <= TARGET_ERROR[task] for p in errors)
    ranking = plan["ranking"]
    rates = [p["full"]["rate_ratio"] for p in errors]
    return ("Prediction error at the full-budget runs' own tokens (predicted - measured; in brackets the reach, "
            "their tokens over the size's longest calibration run's): " +
            ", ".join(f"{p['size']} {p['full']['error_at_tokens']:+.3f} ({p['full']['reach']:.2g}x)" for p in errors) +
            f" bits; issue 35's target is within {TARGET_ERROR[task]} bits: {'met' if met else 'not met'}" +
            (" (in-sample: plan.fit_full_runs fits them too)" if in_sample else "") +
            ". At their budgets in " + plan["unit"] + ", by the calibration's tokens per " + plan["unit"][:-1] +
            ": " + ", ".join(f"{p['size']} {p['full']['error']:+.3f}" for p in errors) +
            f" bits; the full runs trained {min(rates):.2f}-{max(rates):.2f}x the tokens a {plan['unit'][:-1]} "
            "that the calibration runs did (the law's tokens axis does not depend on that; the mapping to "
            f"{plan['unit']} does, so calibrate on the machine, and under the load, that will train)" +
            f". Ranking: {ranking['pairs']} pairs differ by more than {ranking['tolerance']} bits, " +
            (f"predicted in the wrong order: {', '.join(ranking['wrong'])}." if ranking["wrong"] else
             "all in the measured order."))


if __name__ == "__main__":
    run_stage(main)
