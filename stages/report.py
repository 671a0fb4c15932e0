"""report: the paper's figures, the tables behind them, a verdict on each claim, and a recommendation.

Reads the learning curves (reports/curves/) and every evaluated variant (reports/variants.csv).
Writes reports/figures/*.png and *.svg (seaborn) and reports/report.md. Verdicts say "holds",
"does not hold" or "inconclusive" from the numbers alone; a difference smaller than its uncertainty
(the bootstrap confidence intervals, or `report.loss_tolerance` for losses) decides nothing.

Usage: python -m stages.report
"""
import json
import platform
from importlib import metadata
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from stages.lib import StageError, load_params, log, run_stage

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

FIGURES = Path("reports/figures")
CURVES = Path("reports/curves")
PACKAGES = ["torch", "fairseq", "ve-fairseq", "fairseq-fixed", "transformers", "optimum", "optimum-onnx",
            "onnxruntime", "sacrebleu", "dvc", "seaborn"]


def main(argv):
    params = load_params()
    cfg = params.report
    variants = pd.read_csv("reports/variants.csv")
    if variants.empty:
        raise StageError("reports/variants.csv: no rows (run `dvc repro tabulate`)")
    mlm = read_curves("pretrain", params.pretrain.sizes, params.models.mlm)
    mt = read_curves("train_mt", params.train_mt.sizes, params.models.mt)
    FIGURES.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid", context="paper")

    sections = [environment(params, variants)]
    sections.append(figure_mlm_curves(mlm))
    sections.append(figure_mt_curves(mt))
    scored = variants[variants.metric != "loss"]  # the scores, higher-is-better; a task's headline comes first
    headline = scored.groupby("task").metric.first().to_dict()
    main_rows = pd.concat([scored[(scored.task == t) & (scored.metric == m)] for t, m in headline.items()])
    main_rows = main_rows[main_rows.split.isin(["dev", "test", "dev_matched"])]
    sections.append(figure_sparsity(main_rows))
    sections.append(figure_bits(main_rows))
    sections.append(figure_frontier(main_rows))
    sections.append(figure_latency(main_rows))
    verdicts = [verdict_wallclock(mlm, cfg.loss_tolerance), verdict_updates(mlm),
                verdict_robustness(main_rows), verdict_equal_size(main_rows)]
    sections.append("## Verdicts\n\n| claim | verdict | evidence |\n|---|---|---|\n" +
                    "\n".join(f"| {c} | **{v}** | {e} |" for c, v, e in verdicts))
    sections.append(recommendation(main_rows, cfg))
    Path("reports/report.md").write_text("# Train large, then compress: report\n\n" + "\n\n".join(sections) + "\n")
    log(f"wrote reports/report.md and {len(list(FIGURES.glob('*.png')))} figures in {FIGURES}")


# ---------------------------------------------------------------- inputs

def read_curves(stage: str, sizes: list, grid: dict) -> pd.DataFrame:
    frames = []
    for name in sizes:
        path = CURVES / f"{stage}-{name}.csv"
        if not path.exists():
            raise StageError(f"{path}: missing (run `dvc repro {stage}`)")
        size = grid[name]
        frames.append(pd.read_csv(path).assign(size=name, layers=size.layers, hidden=size.hidden,
                                               parameters=size.layers * (4 * size.hidden ** 2
                                                                         + 2 * size.hidden * size.ffn)))
    return pd.concat(frames, ignore_index=True)


def sweeps(curves: pd.DataFrame) -> dict:
    """The depth sweep (sizes sharing the most common width) and the width sweep (sharing the most
    common depth), as in the paper's figures."""
    sizes = curves.drop_duplicates("size")
    width, depth = sizes.hidden.mode()[0], sizes.layers.mode()[0]
    return {f"depth sweep (hidden {width})": sizes[sizes.hidden == width].sort_values("parameters")["size"].tolist(),
            f"width sweep ({depth} layers)": sizes[sizes.layers == depth].sort_values("parameters")["size"].tolist()}


def save(fig, name: str) -> str:
    fig.tight_layout()
    for suffix in ("png", "svg"):
        fig.savefig(FIGURES / f"{name}.{suffix}", dpi=130)
    plt.close(fig)
    return f"![{name}](figures/{name}.png)"


def table(frame: pd.DataFrame) -> str:
    """A markdown table; numbers to 4 significant digits."""
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    header = "| " + " | ".join(map(str, frame.columns)) + " |\n|" + "---|" * len(frame.columns)
    return header + "".join("\n| " + " | ".join(map(cell, row)) + " |" for row in frame.itertuples(index=False))


# ---------------------------------------------------------------- figures

def figure_mlm_curves(mlm: pd.DataFrame) -> str:
    groups = sweeps(mlm)
    fig, axes = plt.subplots(2, len(groups), figsize=(5.5 * len(groups), 7), squeeze=False)
    for col, (title, names) in enumerate(groups.items()):
        data = mlm[mlm["size"].isin(names)]
        for row, x, label in ((0, "seconds", "training wall-clock (s)"), (1, "updates", "updates")):
            ax = axes[row][col]
            sns.lineplot(data=data, x=x, y="valid_ppl", hue="size", hue_order=names, marker="o", ax=ax)
            ax.set(yscale="log", xlabel=label, ylabel="validation perplexity (log scale)", title=title)
    final = mlm.sort_values("updates").groupby("size").last().reset_index()
    return ("## 1. Masked-LM pretraining: validation perplexity\n\n" + save(fig, "mlm_curves") + "\n\n" +
            table(final[["size", "layers", "hidden", "parameters", "updates", "seconds", "valid_loss",
                         "valid_ppl"]].rename(columns={"parameters": "non-embedding params",
                                                      "valid_loss": "valid loss (bits)"})))


def figure_mt_curves(mt: pd.DataFrame) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    order = mt.drop_duplicates("size").sort_values("parameters")["size"].tolist()
    sns.lineplot(data=mt, x="seconds", y="valid_bleu", hue="size", hue_order=order, marker="o", ax=axes[0])
    axes[0].set(xlabel="training wall-clock (s)", ylabel="validation BLEU (greedy)", title="translation BLEU")
    sns.lineplot(data=mt, x="seconds", y="valid_loss", hue="size", hue_order=order, marker="o", ax=axes[1])
    axes[1].set(xlabel="training wall-clock (s)", ylabel="validation loss (bits per token)", title="translation loss")
    final = mt.sort_values("updates").groupby("size").last().reset_index()
    return ("## 2. Translation training: validation BLEU and loss\n\n" + save(fig, "mt_curves") + "\n\n" +
            table(final[["size", "layers", "hidden", "parameters", "updates", "seconds", "valid_loss", "valid_bleu"]]
                  .rename(columns={"parameters": "non-embedding params"})))


def size_order(rows: pd.DataFrame) -> list:
    return rows.drop_duplicates("size").sort_values("parameters")["size"].tolist()


def per_task(rows: pd.DataFrame, draw, name: str, width=5.0):
    tasks = sorted(rows.task.unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(width * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        data = rows[rows.task == task]
        draw(ax, data, size_order(data))
        constant = data.constant_score.dropna()
        if len(constant):  # what a model that ignores its input scores
            ax.axhline(constant.iloc[0], color="grey", linestyle="--", linewidth=1, label="constant prediction")
            ax.legend(title="size")
        ax.set_title(f"{task} ({data.split.iloc[0]}, {data.examples.iloc[0]} examples)")
    return save(fig, name)


def metric_label(rows: pd.DataFrame) -> str:
    return " / ".join(sorted(rows.metric.unique()))


def figure_sparsity(rows: pd.DataFrame) -> str:
    data = rows[rows.format == "fairseq fp32"]

    def draw(ax, d, order):
        for size, color in zip(order, sns.color_palette(n_colors=len(order))):
            s = d[d["size"] == size].sort_values("sparsity")
            ax.plot(s.sparsity, s.value, marker="o", color=color, label=size)
            ax.fill_between(s.sparsity, s.ci_low, s.ci_high, color=color, alpha=0.15)
        ax.set(xlabel="sparsity (fraction of layer weights pruned)", ylabel=metric_label(d) + " (95% CI band)")
        ax.legend(title="size")
    image = per_task(data, draw, "sparsity")
    pivot = data.pivot_table(index=["task", "size"], columns="target_sparsity", values="value").reset_index()
    return "## 3. Accuracy against pruning sparsity (fp32)\n\n" + image + "\n\n" + table(pivot)


def figure_bits(rows: pd.DataFrame) -> str:
    data = rows[rows.format.isin(["fairseq fp32", "simulated k-bit"]) & (rows.target_sparsity == 0)]

    def draw(ax, d, order):
        sns.lineplot(data=d, x="bits", y="value", hue="size", hue_order=order, marker="o", ax=ax)
        ax.set(xscale="log", xlabel="bits per layer weight (log scale; 32 = fp32)", ylabel=metric_label(d))
        ax.set_xticks(sorted(d.bits.unique()), [str(b) for b in sorted(d.bits.unique())])
        ax.legend(title="size")
    image = per_task(data, draw, "bits")
    pivot = data.pivot_table(index=["task", "size"], columns="bits", values="value").reset_index()
    return "## 4. Accuracy against quantization bits (no pruning)\n\n" + image + "\n\n" + table(pivot)


def pareto(d: pd.DataFrame, x: str) -> pd.DataFrame:
    """Variants no other variant beats on both smaller `x` and higher value."""
    d = d.sort_values([x, "value"], ascending=[True, False])
    return d[d.value > d.value.cummax().shift(fill_value=-np.inf)]


def figure_frontier(rows: pd.DataFrame) -> str:
    def draw(ax, d, order):
        sns.scatterplot(data=d, x="bytes_zip", y="value", hue="size", hue_order=order, style="format", ax=ax, s=28)
        front = pareto(d, "bytes_zip")
        ax.step(front.bytes_zip, front.value, where="post", color="black", lw=1, label="Pareto frontier")
        ax.set(xscale="log", xlabel="compressed model size (bytes, zip; log scale)", ylabel=metric_label(d))
        ax.legend(fontsize=6)
    image = per_task(rows, draw, "frontier", width=6)
    front = pd.concat([pareto(rows[rows.task == t], "bytes_zip") for t in sorted(rows.task.unique())])
    return ("## 5. Accuracy against compressed size: the Pareto frontier\n\n" + image + "\n\nThe frontier:\n\n" +
            table(front[["task", "size", "variant", "format", "sparsity", "bits", "bytes_zip", "metric", "value",
                         "ci_low", "ci_high"]]))


def figure_latency(rows: pd.DataFrame) -> str:
    data = rows[rows.latency_ms.notna()]
    if data.empty:
        return "## 6. Accuracy against latency\n\nNo timed variants."

    def draw(ax, d, order):
        sns.scatterplot(data=d, x="latency_ms", y="value", hue="size", hue_order=order, style="format", ax=ax, s=40)
        ax.set(xscale="log", xlabel="latency at batch 1 (ms; log scale)", ylabel=metric_label(d))
        ax.legend(fontsize=6)
    image = per_task(data, draw, "latency")
    return ("## 6. Accuracy against measured latency (deployment formats)\n\n" + image + "\n\n" +
            table(data[["task", "size", "variant", "format", "value", "latency_ms", "throughput", "throughput_unit",
                        "threads", "hardware"]]))


# ---------------------------------------------------------------- verdicts

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
        d = rows[(rows.task == task) & rows.format.isin(["fairseq fp32", "simulated k-bit"])]
        dense = {size: d[(d["size"] == size) & (d.variant == "s0.00-fp32")].iloc[0] for size in size_order(d)}
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
                          for r in d[d["size"] == name].itertuples() if r.variant != "s0.00-fp32"}
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
        dense = d[(d.format == "fairseq fp32") & (d.target_sparsity == 0)]
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


# ---------------------------------------------------------------- recommendation and environment

def recommendation(rows: pd.DataFrame, cfg) -> str:
    lines = ["## Recommendation", "",
             f"Deployment limit from params (`report.max_bytes` {cfg.max_bytes}, `report.max_latency_ms` "
             f"{cfg.max_latency_ms}); the training budget is the one this run used.", ""]
    for task in sorted(rows.task.unique()):
        d = rows[rows.task == task]
        if cfg.max_bytes is not None:
            d = d[d.bytes_zip <= cfg.max_bytes]
        if cfg.max_latency_ms is not None:
            d = d[d.latency_ms.notna() & (d.latency_ms <= cfg.max_latency_ms)]
        if d.empty:
            lines.append(f"- **{task}**: no measured variant meets the limit.")
            continue
        beats_constant = d.apply(learned, axis=1)
        if not beats_constant.any():
            best = d.sort_values(["value", "bytes_zip"], ascending=[False, True]).iloc[0]
            lines.append(f"- **{task}**: nothing to ship: no variant beats constant prediction "
                         f"({best.metric} {best.constant_score:.2f} on these examples) beyond its confidence "
                         f"interval; the best, {best['size']} {best.variant}, scores {best.value:.2f} "
                         f"[{best.ci_low:.2f}, {best.ci_high:.2f}]. Train longer or on more data.")
            continue
        d = d[beats_constant]
        best = d.sort_values(["value", "bytes_zip"], ascending=[False, True]).iloc[0]
        # variants whose score lies inside the best one's confidence interval are as good, as far as we know
        close = d[(d.value >= best.ci_low) & (d.variant + d["size"] != best.variant + best["size"])]
        smaller = close[close.bytes_zip < best.bytes_zip]
        smallest = smaller.sort_values("bytes_zip").iloc[0] if not smaller.empty else None
        lines.append(f"- **{task}**: train **{best['size']}**, ship **{best.variant}** ({best.format}, sparsity "
                     f"{best.sparsity:.2f}, {best.bits} bits): {best.metric} {best.value:.2f} "
                     f"[{best.ci_low:.2f}, {best.ci_high:.2f}], {best.bytes_zip / 1e6:.2f} MB zipped"
                     + (f", {best.latency_ms:.2f} ms at batch 1" if pd.notna(best.latency_ms) else "") + ". "
                     + (f"{len(close)} other variants score within its confidence interval"
                        + (f"; the smallest of them is {smallest['size']} {smallest.variant} "
                           f"({smallest.bytes_zip / 1e6:.2f} MB, {smallest.metric} {smallest.value:.2f})."
                           if smallest is not None else ", none of them smaller.")
                        if len(close) else "No other variant scores within its confidence interval."))
    return "\n".join(lines)


def environment(params, variants: pd.DataFrame) -> str:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    caps = {}
    for path in sorted(Path("data/bin").glob("**/caps.json")) + sorted(Path("data/bin/glue").glob("*/meta.json")):
        caps[str(path.parent)] = json.loads(path.read_text()).get("caps", json.loads(path.read_text()))
    sizes = pd.DataFrame([{"task": kind, "size": n, **s.model_dump()}
                          for kind, grid, names in (("masked LM", params.models.mlm, params.pretrain.sizes),
                                                    ("translation", params.models.mt, params.train_mt.sizes))
                          for n, s in grid.items() if n in names])
    return "\n".join([
        "## Environment", "",
        f"- evaluation hardware: {', '.join(sorted(variants.hardware.unique()))}; {params.evaluate.threads} threads;"
        f" training device `{params.training.device}`, precision `{params.training.precision}`",
        f"- python {platform.python_version()}; " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- budgets: pretrain {params.pretrain.budget.model_dump()}, finetune {params.finetune.budget.model_dump()},"
        f" translation {params.train_mt.budget.model_dump()}",
        f"- data caps: {json.dumps(caps)}",
        f"- compression: {params.compress.pruning} magnitude pruning, quantization scales per "
        f"{params.compress.granularity}, recovery fine-tuning after pruning: "
        + (f"{params.compress.recovery.model_dump()}" if params.compress.recovery.seconds or
           params.compress.recovery.updates else "none (the paper's setting)"),
        f"- evaluation caps: dev {params.evaluate.max_dev_examples}, test {params.evaluate.max_test_sentences};"
        f" beam {params.evaluate.beam}",
        "", table(sizes)])


if __name__ == "__main__":
    run_stage(main)
