"""What a run's learning-rate schedule has done by a point of its curve, as the scaling law with annealing
(lib/scaling.py) reads it: the area, the tokens trained each weighted by its learning rate over the peak, and
the annealed share, how much of the peak rate the decay has taken off (Tissue et al. 2024, "Scaling law with
learning rate annealing": their S1, and their S2 with momentum 0).

Both in shares of the peak rate per update i (1-based), a warm-up ramp min(1, i / warmup) times a decay:
linear (lib/schedule.py) 1 - (1 - end) * spent, spent the share of the budget used (so the annealed share is
1 - end at the run's end), inverse_sqrt (fairseq's) min(1, sqrt(warmup / i)). A recorded curve gives the
spent share at each of its points through the learning rate it logged there; in between it is interpolated.
A run's end is in closed form, for any length.

With momentum 0, Tissue et al.'s S2 is the annealed share itself; their 0.999 (runs of tens of thousands of
updates) fitted the default calibration's curves (runs of 80-900 updates) worse, 0.9-0.98 as well as 0."""
import numpy as np


def warm(i, warmup: float):
    return np.minimum(1.0, i / warmup) if warmup > 0 else np.ones_like(i, dtype=float)


def curve_areas(kind: str, warmup: float, end: float, updates, lr_shares, tokens_per_update: float) -> tuple:
    """(area in tokens, annealed share) at each point of a recorded curve: `updates` and the logged learning
    rate over the peak there (`lr_shares`), a run of `kind` with `warmup` updates ending at the share `end`."""
    updates, lr_shares = np.asarray(updates, dtype=float), np.asarray(lr_shares, dtype=float)
    i = np.arange(1, int(updates.max()) + 1, dtype=float)
    if kind == "linear":  # the spent share where the curve logged it, 0 at the start, interpolated between
        spent_at = np.clip((1 - lr_shares / warm(updates, warmup)) / max(1 - end, 1e-12), 0.0, 1.0)
        decay = 1 - (1 - end) * np.interp(i, np.r_[0.0, updates], np.r_[0.0, spent_at])
    else:
        decay = np.minimum(1.0, np.sqrt(warmup / i)) if warmup > 0 else np.ones_like(i)
    at = updates.astype(int) - 1
    return np.cumsum(warm(i, warmup) * decay)[at] * tokens_per_update, 1 - decay[at]


def end_area(kind: str, updates, warmup, end: float) -> tuple:
    """(area in updates, annealed share) at the end of a run of `updates` (arrays welcome), in closed form (the
    integral of the shares: within an update of their sum)."""
    u = np.asarray(updates, dtype=float)
    w = np.broadcast_to(np.asarray(warmup, dtype=float), u.shape)
    m, ramp = np.minimum(w, u), np.maximum(w, 1e-12)  # the warm-up's part of the run, and its slope's inverse
    if kind == "linear":  # the ramp x / w times the decay 1 - (1 - end) x / u, then the decay alone
        area = (m ** 2 / (2 * ramp) - (1 - end) * m ** 3 / (3 * ramp * u)
                + (u - m) - (1 - end) * (u ** 2 - m ** 2) / (2 * u))
        return area, np.full_like(u, 1 - end)
    past = (u > w) & (w > 0)  # the ramp, then sqrt(w / x) past it; no warm-up: no decay either
    area = np.where(past, w / 2 + 2 * (np.sqrt(ramp * u) - w), np.where(w > 0, u ** 2 / (2 * ramp), u))
    return area, np.where(past, 1 - np.sqrt(ramp / u), 0.0)
