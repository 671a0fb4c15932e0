"""report: the paper's figures, the tables behind them, a verdict on each claim, and a recommendation.

Reads the learning curves (reports/curves/), each trained size's summary.json (models/pretrain/<size>/,
models/mt/<size>/: precision and hardware), the unigram baseline of the masked-LM valid set
(data/bin/mlm/unigram.json) and every evaluated variant (reports/variants.csv; rows with init "random"
are the pretraining control, used only in its own section). Writes reports/figures/*.png and *.svg
(seaborn) and reports/report.md. The verdicts and the recommendation are lib/verdicts.py's; the examples where
a recommended variant and its dense model disagree come from reports/predictions/ (lib/predictions.py).

Usage: python -m stages.report
"""
from pathlib import Path

import matplotlib.ticker as ticker
import numpy as np
import pandas as pd

from lib.calibration import with_plan_note
from lib.environment import environment
from lib.errors import StageError, log
from lib.figures import FIGURES, colors_of, figure_legend, log_axis, plt, save, sns, table
from lib.params import load_params
from lib.predictions import disagreement_table
from lib.results import last_points, read_curves, read_unigram, read_variants
from lib.stage import run_stage
from lib.variants import DENSE, FAIRSEQ_FP32, HEADLINE_SPLITS, SIMULATED, headline_metrics, model_name
from lib.verdicts import (recommendation, recommended, size_order, sweeps, verdict_equal_size, verdict_pretraining,
                          verdict_robustness, verdict_updates, verdict_wallclock)


def main(argv):
    params = load_params()
    cfg = params.report
    variants = read_variants(Path("reports/variants.csv"))
    # the control (fine-tuned from random initialisation) answers one question only: no other figure,
    # table, verdict or recommendation may mix it with the pretrained models
    control, variants = variants[variants.init == "random"], variants[variants.init != "random"]
    if variants.empty:
        raise StageError("reports/variants.csv: no pretrained rows (run `dvc repro tabulate`)")
    mlm = read_curves("pretrain", params.pretrain.sizes, params.models.mlm, "mlm")
    mt = read_curves("train_mt", params.train_mt.sizes, params.models.mt, "mt")
    unigram_bits = read_unigram()
    FIGURES.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid", context="paper")

    sections = [environment(params, variants)]
    sections.append(figure_mlm_curves(mlm, unigram_bits))
    sections.append(figure_mt_curves(mt))
    sections.append(figure_throughput(mlm, mt))
    headline = headline_metrics(variants.to_dict("records"))
    main_rows = pd.concat([variants[(variants.task == t) & (variants.metric == m)] for t, m in headline.items()])
    main_rows = main_rows[main_rows.split.isin(HEADLINE_SPLITS)]
    sections.append(figure_sparsity(main_rows))
    sections.append(figure_bits(main_rows))
    sections.append(figure_frontier(main_rows))
    sections.append(figure_latency(main_rows))
    sections.append(pretraining_control(main_rows, control))
    verdicts = [with_plan_note(verdict_wallclock(mlm, cfg.loss_tolerance)), verdict_updates(mlm),
                verdict_robustness(main_rows), verdict_equal_size(main_rows)]
    sections.append("## Verdicts\n\n| claim | verdict | evidence |\n|---|---|---|\n" +
                    "\n".join(f"| {c} | **{v}** | {e} |" for c, v, e in verdicts))
    sections.append(recommendation(main_rows, cfg))
    sections.append(disagreement_examples(main_rows, cfg))
    Path("reports/report.md").write_text("# Train large, then compress: report\n\n" + "\n\n".join(sections) + "\n")
    log(f"wrote reports/report.md and {len(list(FIGURES.glob('*.png')))} figures in {FIGURES}")


# ---------------------------------------------------------------- training figures

def draw_mlm(mlm: pd.DataFrame, unigram_bits: float):
    """Validation perplexity against wall-clock, FLOPs and updates, one row per sweep."""
    groups, colors = sweeps(mlm), colors_of(size_order(mlm))
    if set(mlm["size"]) - {name for names in groups.values() for name in names}:  # else a size would be missing
        groups["all sizes"] = size_order(mlm)
    views = (("seconds", "training wall-clock (s)"), ("flops", "training FLOPs (6 N per token; log scale)"),
             ("updates", "updates"))
    fig, axes = plt.subplots(len(groups), len(views), figsize=(4.3 * len(views), 3.5 * len(groups)), squeeze=False)
    for row, (title, names) in enumerate(groups.items()):
        data = mlm[mlm["size"].isin(names)]
        for col, (x, label) in enumerate(views):
            ax = axes[row][col]
            sns.lineplot(data=data, x=x, y="valid_ppl", hue="size", hue_order=names, palette=colors, marker="o", ax=ax)
            ax.axhline(2 ** unigram_bits, color="grey", linestyle="--", linewidth=1, label="unigram baseline")
            ax.set(yscale="log", xlabel=label, ylabel="validation perplexity (log scale)", title=title)
            if x == "flops":
                ax.set_xscale("log")
                log_axis(ax, "x")
            log_axis(ax, "y")
    figure_legend(fig, axes.flat, "size", size_order(mlm))
    return fig


def figure_mlm_curves(mlm: pd.DataFrame, unigram_bits: float) -> str:
    final = last_points(mlm).assign(below=lambda f: unigram_bits - f.valid_loss)
    return ("## 1. Masked-LM pretraining: validation perplexity\n\n" + save(draw_mlm(mlm, unigram_bits), "mlm_curves")
            + f"\n\nPerplexity is 2^loss (fairseq's losses are in bits). The dashed line is an add-one unigram of "
            f"the training token counts on the same valid set ({unigram_bits:.3f} bits, perplexity "
            f"{2 ** unigram_bits:.0f}): a model above it knows less than word frequencies. Claim (a) compares "
            "sizes at equal wall-clock (left); it rests on larger models costing less than proportionally more "
            "per step, and section 3's throughput table shows whether that holds on this hardware. Against "
            "training FLOPs (middle) the hardware drops out: the sizes compare at equal estimated compute.\n\n" +
            table(final[["size", "layers", "hidden", "parameters", "updates", "seconds", "valid_loss",
                         "below", "valid_ppl"]].rename(columns={"parameters": "non-embedding params",
                                                                "valid_loss": "valid loss (bits)",
                                                                "below": "bits below unigram"})))


def figure_mt_curves(mt: pd.DataFrame) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    order = size_order(mt)
    for ax, y, label, title in ((axes[0], "valid_bleu", "validation BLEU (greedy)", "translation BLEU"),
                                (axes[1], "valid_loss", "validation loss (bits per token)", "translation loss")):
        sns.lineplot(data=mt, x="seconds", y=y, hue="size", hue_order=order, palette=colors_of(order), marker="o",
                     ax=ax)
        ax.set(xlabel="training wall-clock (s)", ylabel=label, title=title)
    figure_legend(fig, axes, "size", order)
    return ("## 2. Translation training: validation BLEU and loss\n\n" + save(fig, "mt_curves") + "\n\n" +
            table(last_points(mt)[["size", "layers", "hidden", "parameters", "updates", "seconds", "valid_loss",
                                   "valid_bleu"]].rename(columns={"parameters": "non-embedding params"})))


def figure_throughput(mlm: pd.DataFrame, mt: pd.DataFrame) -> str:
    final = pd.concat([last_points(mlm).assign(stage="pretraining"), last_points(mt).assign(stage="translation")])
    final = final.assign(tokens_per_s=final.tokens / final.seconds, flops_per_s=final.flops / final.seconds)
    stages = list(final.groupby("stage", sort=False))
    fig, axes = plt.subplots(1, len(stages), figsize=(4.6 * len(stages), 3.6), squeeze=False)
    sentences = []
    for ax, (stage, d) in zip(axes[0], stages):
        ax.plot(d.parameters, d.tokens_per_s, marker="o", label="measured")
        # constant FLOPs/s: what tokens/s would be if a token cost in proportion to the parameters
        ax.plot(d.parameters, d.tokens_per_s.iloc[0] * d.parameters.iloc[0] / d.parameters, color="grey",
                linestyle="--", linewidth=1, label="if cost grew in proportion to parameters")
        for name, x, y in zip(d["size"], d.parameters, d.tokens_per_s):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set(xscale="log", yscale="log", xlabel="non-embedding parameters (log scale)",
               ylabel="training tokens/s (log scale)", title=stage)
        log_axis(ax, "x")
        log_axis(ax, "y")
        small, large = d.iloc[0], d.iloc[-1]
        if len(d) < 2:
            sentences.append(f"{stage}: one size, nothing to compare.")
            continue
        n_ratio, slowdown = large.parameters / small.parameters, small.tokens_per_s / large.tokens_per_s
        sentences.append(
            f"{stage}: {large['size']} has {n_ratio:.1f}x the non-embedding parameters of {small['size']} and "
            + (f"trains {slowdown:.1f}x fewer tokens/s" if slowdown >= 1 else f"trains {1 / slowdown:.1f}x more tokens/s")
            + ", so a token costs it "
            + ("less than proportionally more: the premise of claim (a) holds on this hardware."
               if slowdown < n_ratio else
               "proportionally more or worse: the premise of claim (a) does not hold on this hardware."))
    figure_legend(fig, axes[0])
    return ("## 3. Training throughput on this hardware\n\n" + save(fig, "throughput") + "\n\n"
            "Tokens/s is the tokens trained over `seconds` at each curve's last point; `seconds` is fairseq's "
            "training wall-clock, validation included (the budget's clock). FLOPs/s uses the 6 N FLOPs-per-token "
            "estimate. Every size trains batches of the same number of tokens, so tokens/s also compares the "
            "cost of a step.\n\n" + " ".join(sentences) + "\n\n" +
            table(final.assign(tokens_per_s=final.tokens_per_s.round().astype("Int64"))  # 14803, not 1.48e+04
                  [["stage", "size", "parameters", "tokens_per_s", "flops_per_s", "precision", "hardware"]]
                  .rename(columns={"parameters": "non-embedding params", "tokens_per_s": "tokens/s",
                                   "flops_per_s": "FLOPs/s"})))


# ---------------------------------------------------------------- evaluation figures

def per_task(rows: pd.DataFrame, draw, name: str, width=5.0, legend_title: str | None = "size"):
    tasks, order = sorted(rows.task.unique()), size_order(rows)
    colors = colors_of(order)
    fig, axes = plt.subplots(1, len(tasks), figsize=(width * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        data = rows[rows.task == task]
        draw(ax, data, [s for s in order if s in set(data["size"])], colors)
        constant = data.constant_score.dropna()
        if len(constant):  # what a model that ignores its input scores
            ax.axhline(constant.iloc[0], color="grey", linestyle="--", linewidth=1, label="constant prediction")
        ax.set_title(f"{task} ({data.split.iloc[0]}, {data.examples.iloc[0]} examples)")
    figure_legend(fig, axes[0], legend_title, order)
    return save(fig, name)


def metric_label(rows: pd.DataFrame) -> str:
    return " / ".join(sorted(rows.metric.unique()))


def figure_sparsity(rows: pd.DataFrame) -> str:
    data = rows[rows.format == FAIRSEQ_FP32]

    def draw(ax, d, order, colors):
        for size in order:
            s = d[d["size"] == size].sort_values("sparsity")
            ax.plot(s.sparsity, s.value, marker="o", color=colors[size], label=size)
            ax.fill_between(s.sparsity, s.ci_low, s.ci_high, color=colors[size], alpha=0.15)
        ax.set(xlabel="sparsity (fraction of layer weights pruned)", ylabel=metric_label(d) + " (95% CI band)")
    image = per_task(data, draw, "sparsity")
    pivot = data.pivot_table(index=["task", "size"], columns="target_sparsity", values="value").reset_index()
    return "## 4. Accuracy against pruning sparsity (fp32)\n\n" + image + "\n\n" + table(pivot)


def figure_bits(rows: pd.DataFrame) -> str:
    data = rows[rows.format.isin([FAIRSEQ_FP32, SIMULATED]) & (rows.target_sparsity == 0)]

    def draw(ax, d, order, colors):
        sns.lineplot(data=d, x="bits", y="value", hue="size", hue_order=order, palette=colors, marker="o", ax=ax)
        ax.set(xscale="log", xlabel="bits per layer weight (log scale; 32 = fp32)", ylabel=metric_label(d))
        ax.set_xticks(sorted(d.bits.unique()), [str(b) for b in sorted(d.bits.unique())])
        ax.xaxis.set_minor_locator(ticker.NullLocator())  # only the bits evaluated are ticked
    image = per_task(data, draw, "bits")
    pivot = data.pivot_table(index=["task", "size"], columns="bits", values="value").reset_index()
    return "## 5. Accuracy against quantization bits (no pruning)\n\n" + image + "\n\n" + table(pivot)


def pareto(d: pd.DataFrame, x: str) -> pd.DataFrame:
    """Variants no other variant beats on both smaller `x` and higher value."""
    d = d.sort_values([x, "value"], ascending=[True, False])
    return d[d.value > d.value.cummax().shift(fill_value=-np.inf)]


def figure_frontier(rows: pd.DataFrame) -> str:
    def draw(ax, d, order, colors):
        sns.scatterplot(data=d, x="bytes_zip", y="value", hue="size", hue_order=order, palette=colors,
                        style="format", ax=ax, s=28)
        front = pareto(d, "bytes_zip")
        ax.step(front.bytes_zip, front.value, where="post", color="black", lw=1, label="Pareto frontier")
        ax.set(xscale="log", xlabel="compressed model size (bytes, zip; log scale)", ylabel=metric_label(d))
        log_axis(ax, "x")
    image = per_task(rows, draw, "frontier", width=5.5, legend_title=None)  # seaborn titles its size/format parts
    front = pd.concat([pareto(rows[rows.task == t], "bytes_zip") for t in sorted(rows.task.unique())])
    return ("## 6. Accuracy against compressed size: the Pareto frontier\n\n" + image + "\n\nThe frontier:\n\n" +
            table(front[["task", "size", "variant", "format", "sparsity", "bits", "bytes_zip", "metric", "value",
                         "ci_low", "ci_high"]]))


def figure_latency(rows: pd.DataFrame) -> str:
    data = rows[rows.latency_ms.notna()]
    if data.empty:
        return "## 7. Accuracy against latency\n\nNo timed variants."

    def draw(ax, d, order, colors):
        sns.scatterplot(data=d, x="latency_ms", y="value", hue="size", hue_order=order, palette=colors,
                        style="format", ax=ax, s=40)
        ax.set(xscale="log", xlabel="latency at batch 1 (ms; log scale)", ylabel=metric_label(d))
        log_axis(ax, "x")
    image = per_task(data, draw, "latency", legend_title=None)
    # a model quantized for one CPU and timed on another: its int8 scheme may not be this CPU's fast one
    elsewhere = data[data.details.fillna("").str.contains("quantized on")]
    moved = ("\n\n**Quantized on another CPU**: " + "; ".join(
        f"{r['size']} {r.variant} ({r.details.split('; ')[-1]})" for _, r in elsewhere.iterrows())
        + ". Run `dvc repro -f` on the compress stages to quantize for this one.") if len(elsewhere) else ""
    return ("## 7. Accuracy against measured latency (deployment formats)\n\n" + image + "\n\n"
            "The int8 models use the scheme compress chose for its CPU (quantization; agreement: the share of the "
            "check set where they predict as fp32), measured on the hardware named in each row." + moved + "\n\n" +
            table(data[["task", "size", "variant", "format", "value", "latency_ms", "throughput", "throughput_unit",
                        "threads", "quantization", "agreement", "hardware"]]))


def pretraining_control(rows: pd.DataFrame, control: pd.DataFrame) -> str:
    """Each control size's dense score from random initialisation against the pretrained one's."""
    title = "## 8. Does pretraining help?\n\n"
    if control.empty:
        return title + ("The control was not run: no size was fine-tuned from random initialisation, so "
                        "nothing here says whether the GLUE scores owe anything to pretraining.")
    keys = ["task", "size", "metric", "split"]
    dense = [d[(d.format == FAIRSEQ_FP32) & (d.target_sparsity == 0)][keys + ["value", "ci_low", "ci_high"]]
             for d in (rows, control)]
    pairs = dense[0].merge(dense[1], on=keys, suffixes=("", "_random"))
    if pairs.empty:
        return title + "No control row matches a pretrained dense variant (same task, size, metric and split)."
    lines = ["| task | size | metric | pretrained [95% CI] | random init [95% CI] | verdict |",
             "|---|---|---|---|---|---|"]
    for r in pairs.itertuples():
        pre, rnd = (r.value, r.ci_low, r.ci_high), (r.value_random, r.ci_low_random, r.ci_high_random)
        lines.append(f"| {r.task} | {r.size} | {r.metric} | {pre[0]:.4g} [{pre[1]:.4g}, {pre[2]:.4g}] | "
                     f"{rnd[0]:.4g} [{rnd[1]:.4g}, {rnd[2]:.4g}] | {verdict_pretraining(pre, rnd)} |")
    return title + ("The control sizes were fine-tuned from random initialisation under the same budget and "
                    "evaluated dense (fairseq fp32) on the same split. One side is better only if each score "
                    "lies outside the other's 95% interval.\n\n" + "\n".join(lines))


def disagreement_examples(rows: pd.DataFrame, cfg) -> str:
    """For each task's recommended variant, a few examples where it and its dense model predict differently."""
    parts, picks = ["## Where the recommended variant and its dense model disagree"], recommended(rows, cfg)
    for task in sorted(rows.task.unique()):
        best = picks.get(task)
        parts.append(f"**{task}**: " + ("no variant is recommended (see the Recommendation)." if best is None else
                                        "the recommendation is the dense model itself." if best.variant == DENSE else
                                        disagreement_table(model_name(best["size"], task), best.variant, DENSE)))
    return "\n\n".join(parts)


if __name__ == "__main__":
    run_stage(main)
