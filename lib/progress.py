"""A training run on the console: one progress bar over its budget (updates or seconds) with the figures that
matter (train loss, last valid loss, updates/s, tokens/s, time left), and the line the run ends with.

On a terminal a tqdm bar redraws in place. Elsewhere (`dvc repro`, output piped to a file) a plain line
instead, each time another 10% of the budget is spent but at most one per PIPELINE_PROGRESS_SECONDS
(default 30), so a log file does not fill with bars."""
import math
import os
import sys
import time

from lib.errors import log

DRAW_SECONDS = 0.5  # a terminal bar is redrawn at most this often
BAR = "{desc} {percentage:3.0f}%|{bar:20}| "  # then the figures


def budget(args: list) -> tuple[str, float]:
    """The budget in fairseq-train's flags (lib/recipes.budget_flags): ("updates", n) or ("s", seconds)."""
    flags = [str(a) for a in args]
    if "--stop-time-hours" in flags:
        return "s", float(flags[flags.index("--stop-time-hours") + 1]) * 3600
    return "updates", float(flags[flags.index("--max-update") + 1]) if "--max-update" in flags else math.inf


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Told of every update (`update`) and validation (`valid`) of a run that resumes at `updates` and
    `seconds` of training (fairseq's clock, which the seconds budget counts)."""

    def __init__(self, label: str, args: list, updates: int = 0, seconds: float = 0.0):
        self.label, (self.unit, self.total) = label, budget(args)
        self.updates, self.seconds = updates, seconds
        self.tokens, self.loss, self.valid_loss = 0, None, None
        self.rates_from = None  # (time, updates) at this process's first update: rates leave start-up out
        self.drawn = time.time()
        self.interval = float(os.environ.get("PIPELINE_PROGRESS_SECONDS", 30))
        self.printed = (self.drawn, self.fraction())
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=100, desc=label, file=sys.stderr, dynamic_ncols=True, bar_format=BAR)

    def fraction(self) -> float:
        return min(1.0, (self.updates if self.unit == "updates" else self.seconds) / self.total) if self.total else 0.0

    def figures(self) -> str:
        """`108/270 s, 845 updates, loss 8.12, valid 7.90, 3.1 updates/s, 12,345 tokens/s, 2 min 42 s left`"""
        started, first = self.rates_from or (time.time(), self.updates)
        wall = max(time.time() - started, 1e-9)
        rate = (self.updates - first) / wall
        if self.unit == "s":
            spent, left = f"{self.seconds:,.0f}/{self.total:,.0f} s, {self.updates:,} updates", self.total - self.seconds
        else:
            spent = f"{self.updates:,}/{self.total:,.0f} updates"
            left = (self.total - self.updates) / rate if rate and math.isfinite(self.total) else None
        return ", ".join(filter(None, [
            spent, self.loss is not None and f"loss {self.loss:.3f}",
            self.valid_loss is not None and f"valid {self.valid_loss:.3f}",
            rate and f"{rate:.1f} updates/s", rate and f"{self.tokens / wall:,.0f} tokens/s",
            left is not None and f"{duration(left)} left"]))

    def update(self, updates: int, seconds: float, loss: float | None, tokens: int) -> None:
        self.updates, self.seconds = updates, seconds
        if self.rates_from is None:
            self.rates_from = (time.time(), updates)
        else:
            self.tokens += tokens
        if loss is not None:  # smoothed over the last ~20 updates
            self.loss = loss if self.loss is None else 0.95 * self.loss + 0.05 * loss
        now = time.time()
        if self.bar is not None:
            if now - self.drawn >= DRAW_SECONDS:
                self.draw(now)
        elif self.fraction() - self.printed[1] >= 0.1 - 1e-9 and now - self.printed[0] >= self.interval:
            self.printed = (now, self.fraction())
            log(f"{self.label}: {100 * self.fraction():.0f}%, {self.figures()}")

    def valid(self, loss) -> None:
        self.valid_loss = float(loss) if loss not in ("", None) else None

    def draw(self, now: float) -> None:
        self.drawn = now
        self.bar.n = round(100 * self.fraction(), 1)
        self.bar.bar_format = BAR + self.figures().replace("{", "{{").replace("}", "}}")
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.draw(time.time())
            self.bar.close()


def training_facts(rows: list, keep: str) -> list[str]:
    """What a finished run's summary line says: updates and seconds of training, the valid loss (bits), and
    the dev accuracy or BLEU, of the checkpoint kept (`last`, or `best`: fairseq's best by its metric)."""
    last = kept = rows[-1]
    if keep == "best":  # by accuracy where there is one (GLUE), else by loss; fairseq keeps the later of a tie
        accuracy = last.get("valid_accuracy") not in ("", None)
        kept = min(reversed(rows), key=lambda r: -float(r["valid_accuracy"]) if accuracy else float(r["valid_loss"]))
    which = "" if kept is last else f" (best, at update {int(kept['updates']):,})"
    return [f"{int(last['updates']):,} updates in {float(last['seconds']):,.0f} s",
            f"valid {float(kept['valid_loss']):.2f} bits{which}",
            kept.get("valid_accuracy") not in ("", None) and f"dev accuracy {float(kept['valid_accuracy']):.1f}%",
            kept.get("valid_bleu") not in ("", None) and f"valid BLEU {float(kept['valid_bleu']):.2f}"]
