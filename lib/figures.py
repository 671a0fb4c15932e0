"""Drawing helpers of the report's figures: saving PNG and SVG, readable log axes, one legend per figure,
a colour per size kept across figures, markdown tables."""
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402
import seaborn as sns  # noqa: E402

FIGURES = Path("reports/figures")
plt.rcParams["svg.hashsalt"] = "reports"  # SVG element ids from a fixed salt: a figure redrawn unchanged is the
                                          # same file, so git and DVC see only real changes


def save(fig, name: str) -> str:
    fig.tight_layout()
    for suffix in ("png", "svg"):  # bbox "tight": keep the legend placed right of the panels
        fig.savefig(FIGURES / f"{name}.{suffix}", dpi=130, bbox_inches="tight",
                    metadata={"Date": None} if suffix == "svg" else None)  # no timestamp in the file
    plt.close(fig)
    return f"![{name}](figures/{name}.png)"


def table(frame: pd.DataFrame) -> str:
    """A markdown table; numbers to 4 significant digits."""
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    header = "| " + " | ".join(map(str, frame.columns)) + " |\n|" + "---|" * len(frame.columns)
    return header + "".join("\n| " + " | ".join(map(cell, row)) + " |" for row in frame.itertuples(index=False))


def plain(x, _=None) -> str:
    """A tick label a reader can read: 1.6M, 500k, 2e15 (FLOPs), 0.5."""
    if x >= 1e12:
        exponent = int(np.floor(np.log10(x)))
        return f"{x / 10 ** exponent:.2g}e{exponent}"
    for factor, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= factor:
            return f"{x / factor:.3g}{unit}"
    return f"{x:.3g}"


def log_axis(ax, axis: str = "x") -> None:
    """Log-scale ticks at 1, 2 and 5 x 10^k (only powers of ten over a wide range, more over a narrow
    one), labelled plainly, minor ticks unlabelled: matplotlib's default labels minor ticks
    in 10^x notation on short ranges, and they run into each other."""
    side = ax.xaxis if axis == "x" else ax.yaxis
    low, high = ax.get_xlim() if axis == "x" else ax.get_ylim()
    decades = np.log10(high / low)
    narrow = (1.0, 2.0, 3.0, 5.0) if axis == "x" else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)  # x labels are wider
    subs = (1.0,) if decades > 4 else (1.0, 2.0, 5.0) if decades > 1.2 else narrow if decades > 0.3 else range(1, 10)
    side.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    side.set_major_formatter(ticker.FuncFormatter(plain))
    side.set_minor_formatter(ticker.NullFormatter())


def figure_legend(fig, axes, title: str | None = None, first: list = ()) -> None:
    """One legend for the whole figure, right of the panels where it hides no data: every labelled
    entry of every panel (seaborn's legends and lines drawn here), each once; labels in `first` (the
    sizes, smallest first) lead, in that order, or follow seaborn's own "size" heading where a panel
    draws several legend sections (hue and style): a size only one panel has stays with the others."""
    entries = {}
    for ax in axes:
        legend = ax.get_legend()
        if legend is not None:
            for handle, text in zip(legend.legend_handles, legend.get_texts()):
                entries.setdefault(text.get_text(), handle)
            legend.remove()
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    sizes = [label for label in first if label in entries]
    rest = [label for label in entries if label not in first]
    cut = rest.index("size") + 1 if "size" in rest else 0  # seaborn's heading of the hue section
    labels = rest[:cut] + sizes + rest[cut:]
    fig.legend([entries[label] for label in labels], labels, title=title, loc="upper left", bbox_to_anchor=(1, 0.95),
               frameon=False)


COLORS = {}  # size -> colour, for the whole report: a size keeps its colour from figure to figure


def colors_of(order: list) -> dict:
    """The sizes' colours (new sizes take the next colour, in `order`, smallest first)."""
    palette = sns.color_palette(n_colors=10)
    for name in order:
        COLORS.setdefault(name, palette[len(COLORS) % len(palette)])
    return {name: COLORS[name] for name in order}
