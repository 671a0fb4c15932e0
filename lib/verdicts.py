"""The verdicts on the paper's claims, and the recommendation, for stages/report.py. From the numbers
alone: "holds", "does not hold" or "inconclusive"; a difference smaller than its uncertainty (the
bootstrap confidence intervals, or `report.loss_tolerance` for losses) decides nothing."""
import numpy as np
import pandas as pd

from lib.variants import DENSE, FAIRSEQ_FP32, SIMULATED


def sweeps(curves: pd.DataFrame) -> dict:
    """The depth sweep (sizes sharing the most common width) and the width sweep (sharing the most
    common depth), as in the paper's figures."""
    sizes = curves.drop_duplicates("size")
    width, depth = sizes.hidden.mode()[0], sizes.layers.mode()[0]
    return {f"depth sweep (hidden {width})": sizes[sizes.hidden == width].sort_values("parameters")["size"].tolist(),
            f"width sweep ({depth} layers)": sizes[sizes.layers == depth].sort_values("parameters")["size"].tolist()}


def size_order(rows: pd.DataFrame) -> list:
    return rows.drop_duplicates("size").sort_values("parameters")["size"].tolist()


def loss_at(curve: pd.DataFrame, x: str, at: float) -> float:
    curve = curve.sort_values(x)
    return float(np.interp(at, curve[x], curve.valid_loss))


def verdict_wallclock(mlm: pd.DataFrame, tolerance: float):
    claim = "(a) larger models reach a lower validation loss at the same wall-clock"
    at = mlm.groupby("size").seconds.max().min()
    evidence, outcomes = [], []
    for title, names in sweeps(mlm).items():
        if len(names) < 2:
            continue
        losses = [loss_at(mlm[mlm["size"] == n], "seconds", at) for n in names]
        evidence.append(f"{title}, loss (bits) at {at:.0f} s: " + ", ".join(f"{n} {v:.3f}" for n, v in zip(names, losses)))
        outcomes.append(ordered(losses, tolerance))
    if not evidence:
        return claim, "inconclusive", "no depth or width sweep has two sizes"
    return claim, combine(outcomes), "; ".join(evidence) + f" (differences under {tolerance} bits count as ties)"


def verdict_updates(mlm: pd.DataFrame):
    claim = "(b) larger models need fewer updates to reach a given loss"
    target = mlm.groupby("size").valid_loss.min().max()  # the best loss every size reached
    evidence, outcomes = [], []
    for title, names in sweeps(mlm).items():
        if len(names) < 2:
            continue
        needed = [int(mlm[(mlm["size"] == n) & (mlm.valid_loss <= target)].updates.min()) for n in names]
        evidence.append(f"{title}, updates to reach {target:.3f} bits: " +
                        ", ".join(f"{n} {u}" for n, u in zip(names, needed)))
        outcomes.append(ordered(needed, 0))
    if not evidence:
        return claim, "inconclusive", "no depth or width sweep has two sizes"
    return claim, combine(outcomes), "; ".join(evidence) + " (resolution: one validation interval)"


def ordered(values: list, tolerance: float) -> str:
    """'holds' if values fall as size grows (each step by more than tolerance), 'does not hold' if they
    rise, 'inconclusive' otherwise. `values` are ordered from the smallest size to the largest."""
    steps = np.diff(values)
    if np.all(steps < -tolerance):
        return "holds"
    if np.all(steps > tolerance) or values[-1] - values[0] > tolerance:
        return "does not hold"
    return "inconclusive"


def combine(outcomes: list) -> str:
    """One verdict over the sweeps: a claim about all sizes holds only if every sweep shows it; one
    sweep that shows the opposite beyond tolerance, with none showing it, refutes it."""
    if outcomes and all(o == "holds" for o in outcomes):
        return "holds"
    if "does not hold" in outcomes and "holds" not in outcomes:
        return "does not hold"
    return "inconclusive"


def verdict_robustness(rows: pd.DataFrame):
    """Per task: accuracy drop of the largest and the smallest size that learned the task (beat constant
    prediction: a model that did not has nothing to lose) at each compression setting; a drop difference
    counts only where it exceeds the two confidence half-widths combined."""
    claim = "(c) larger models lose less accuracy under the same pruning and quantization"
    wins = losses = ties = 0
    dense_scores, left_out = [], []
    for task in sorted(rows.task.unique()):
        d = rows[(rows.task == task) & rows.format.isin([FAIRSEQ_FP32, SIMULATED])]
        dense = {size: d[(d["size"] == size) & (d.variant == DENSE)].iloc[0] for size in size_order(d)}
        dense_scores += [f"{task} {size} {r.value:.3g}" for size, r in dense.items()]
        at_constant = [size for size, r in dense.items() if not learned(r)]
        if at_constant:
            left_out.append(f"{task} {', '.join(at_constant)} (constant prediction: "
                            f"{next(iter(dense.values())).constant_score:.3g})")
        compared = [size for size in dense if size not in at_constant]
        if len(compared) < 2:
            continue
        drop = {}
        for name in (compared[0], compared[-1]):
            drop[name] = {(r.target_sparsity, r.bits): (dense[name].value - r.value, (r.ci_high - r.ci_low) / 2)
                          for r in d[d["size"] == name].itertuples() if r.variant != DENSE}
        small, large = drop[compared[0]], drop[compared[-1]]
        for key in small.keys() & large.keys():
            (ds, hs), (dl, hl) = small[key], large[key]
            margin = np.hypot(hs, hl)
            wins += ds - dl > margin
            losses += dl - ds > margin
            ties += abs(ds - dl) <= margin
    verdict = "holds" if wins > losses and wins > ties else \
        "does not hold" if losses > wins and losses > ties else "inconclusive"
    return claim, verdict, (f"largest vs smallest size that beat constant prediction, over every (task, sparsity, "
                            f"bits): the larger lost less in {wins}, more in {losses}, within the confidence "
                            f"intervals in {ties}; dense scores: " + ", ".join(dense_scores)
                            + (f"; left out, no better than constant prediction: {'; '.join(left_out)}"
                               if left_out else ""))


def learned(row) -> bool:
    """Whether a variant beats the best input-ignoring predictor beyond its confidence interval (always
    true where there is no such baseline, as for BLEU)."""
    return pd.isna(row.constant_score) or row.ci_low > row.constant_score


def verdict_equal_size(rows: pd.DataFrame):
    """For each dense model's compressed size as a budget: is the best variant within it from a larger
    model, and better than the best dense model within it beyond the confidence intervals?"""
    claim = ("(d) at equal compressed size the best variant comes from a larger model than the best "
             "uncompressed model of that size")
    wins = losses = ties = 0
    evidence = []
    for task in sorted(rows.task.unique()):
        d = rows[rows.task == task]
        dense = d[(d.format == FAIRSEQ_FP32) & (d.target_sparsity == 0)]
        for budget in sorted(dense.bytes_zip):
            best_dense = dense[dense.bytes_zip <= budget].sort_values("value").iloc[-1]
            best = d[d.bytes_zip <= budget].sort_values("value").iloc[-1]
            if best["size"] == best_dense["size"] or best.parameters <= best_dense.parameters:
                ties += 1
                continue
            margin = np.hypot((best.ci_high - best.ci_low) / 2, (best_dense.ci_high - best_dense.ci_low) / 2)
            gain = best.value - best_dense.value
            wins += gain > margin
            ties += gain <= margin
            evidence.append(f"{task} at {budget / 1e6:.1f} MB: {best['size']} {best.variant} {best.value:.1f} vs "
                            f"dense {best_dense['size']} {best_dense.value:.1f}")
    verdict = "holds" if wins and wins >= ties else "does not hold" if not wins and not evidence else "inconclusive"
    return claim, verdict, (f"budgets where a compressed larger model won beyond the CIs: {wins} of {wins + ties + losses}"
                            + (": " + "; ".join(evidence[:6]) if evidence else ""))


def verdict_pretraining(pretrained: tuple, random: tuple) -> str:
    """Pretrained against randomly initialised fine-tuning, each (value, ci_low, ci_high): one is
    better only if each score lies outside the other's 95% interval."""
    (p, p_low, p_high), (r, r_low, r_high) = pretrained, random
    if p_low > r and p > r_high:
        return "pretraining helps at this budget"
    if r_low > p and r > p_high:
        return "random initialisation does better at this budget"
    return ("no measurable difference at this budget: the GLUE scores measure how fast fine-tuning "
            "learns the task, not what pretraining taught")


def shippable(rows: pd.DataFrame, cfg) -> dict:
    """{task: its variants in a format a runtime serves (not simulated k-bit) within the deployment limit}."""
    rows = rows[rows.format != SIMULATED]
    within = {}
    for task in sorted(rows.task.unique()):
        d = rows[rows.task == task]
        if cfg.max_bytes is not None:
            d = d[d.bytes_zip <= cfg.max_bytes]
        if cfg.max_latency_ms is not None:
            d = d[d.latency_ms.notna() & (d.latency_ms <= cfg.max_latency_ms)]
        within[task] = d
    return within


def best_of(d: pd.DataFrame):
    """The highest-scoring variant, the smaller one of a tie."""
    return d.sort_values(["value", "bytes_zip"], ascending=[False, True]).iloc[0]


def recommended(rows: pd.DataFrame, cfg) -> dict:
    """{task: the variant the recommendation ships}: the best within the limit that beats constant prediction
    beyond its confidence interval; a task with none is left out."""
    picks = {task: d[d.apply(learned, axis=1)] for task, d in shippable(rows, cfg).items() if not d.empty}
    return {task: best_of(d) for task, d in picks.items() if not d.empty}


def recommendation(rows: pd.DataFrame, cfg) -> str:
    lines = ["## Recommendation", "",
             f"Deployment limit from params (`report.max_bytes` {cfg.max_bytes}, `report.max_latency_ms` "
             f"{cfg.max_latency_ms}); the training budget is the one this run used. Only formats a runtime serves "
             "are shipped: fairseq fp32 (PyTorch) and the ONNX models, not the simulated k-bit variants; a latency "
             "holds for the CPU and int8 scheme named beside it.", ""]
    for task, d in shippable(rows, cfg).items():
        if d.empty:
            lines.append(f"- **{task}**: no measured variant meets the limit.")
            continue
        beats_constant = d.apply(learned, axis=1)
        if not beats_constant.any():
            best = best_of(d)
            lines.append(f"- **{task}**: nothing to ship: no variant beats constant prediction "
                         f"({best.metric} {best.constant_score:.2f} on these examples) beyond its confidence "
                         f"interval; the best, {best['size']} {best.variant}, scores {best.value:.2f} "
                         f"[{best.ci_low:.2f}, {best.ci_high:.2f}]. Train longer or on more data.")
            continue
        d = d[beats_constant]
        best = best_of(d)
        # variants whose score lies inside the best one's confidence interval are as good, as far as we know
        close = d[(d.value >= best.ci_low) & (d.variant + d["size"] != best.variant + best["size"])]
        smaller = close[close.bytes_zip < best.bytes_zip]
        smallest = smaller.sort_values("bytes_zip").iloc[0] if not smaller.empty else None
        lines.append(f"- **{task}**: train **{best['size']}**, ship **{best.variant}** ({best.format}, sparsity "
                     f"{best.sparsity:.2f}, {best.bits} bits): {best.metric} {best.value:.2f} "
                     f"[{best.ci_low:.2f}, {best.ci_high:.2f}], {best.bytes_zip / 1e6:.2f} MB zipped"
                     + (f", {best.latency_ms:.2f} ms at batch 1 on {best.hardware}"
                        + (f" ({best.quantization})" if isinstance(best.get("quantization"), str) and best.quantization
                           else "") if pd.notna(best.latency_ms) else "") + ". "
                     + (f"{len(close)} other variants score within its confidence interval"
                        + (f"; the smallest of them is {smallest['size']} {smallest.variant} "
                           f"({smallest.bytes_zip / 1e6:.2f} MB, {smallest.metric} {smallest.value:.2f})."
                           if smallest is not None else ", none of them smaller.")
                        if len(close) else "No other variant scores within its confidence interval."))
    return "\n".join(lines)
