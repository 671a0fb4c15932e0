"""The scaling law of valid loss in model size, tokens and learning-rate schedule, fitted to short runs (the
size planner, issue 35).

L(N, S, a) = E + A / N^alpha + B / S^beta - C * a: N the non-embedding parameters (lib/model_size.py), S the
area, the tokens trained so far each weighted by its learning rate over the peak, and a the annealed share,
how much of the peak rate the decay has taken off (lib/lr_area.py). Hoffmann et al. 2022's L(N, D) ("approach 3")
with Tissue et al. 2024's annealing term (their law with momentum 0): at every run's end the rate has come
down the same way (S a fixed share of D, a = 1 - end_lr / peak), so on end points alone it is Hoffmann's law,
C folded into E; with it the law also fits every point along a run's curve, where the rate is still high. So
each calibration run gives the fit its whole curve, not only its last point. Fitted as Hoffmann et al. did:
a Huber loss (delta 1e-3) on log L, minimized by L-BFGS-B from a grid of initial points, the best kept; the
bootstrap resamples whole runs (the points of one curve are not independent); E may be held at or above a
floor, the least loss the objective allows (lib/objective.py). A budget maps to a run's end through each
size's measured rate (lib/calibration.py), so a crossover between two sizes is a budget, found by bisection
in log budget. Pure functions of arrays: no files."""
import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

HUBER_DELTA = 1e-3
NAMES = ("E", "A", "B", "alpha", "beta", "C")
EXPONENT_BOUNDS = (0.01, 3.0)


@dataclass(frozen=True)
class Law:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    C: float = 0.0

    def loss(self, n, area, annealed):
        """Predicted loss of N parameters after training over `area` (tokens times rate shares), its rate
        annealed by the share `annealed` of the peak."""
        n, area = np.asarray(n, dtype=float), np.asarray(area, dtype=float)
        return self.E + self.A / n ** self.alpha + self.B / area ** self.beta - self.C * np.asarray(annealed)

    def as_dict(self) -> dict:
        return asdict(self)


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r ** 2, delta * (a - 0.5 * delta))


def _unpack(theta, fixed: dict) -> tuple:
    """(e, a, b, alpha, beta, c) from the free parameters theta, exponents in `fixed` taken from there."""
    free = iter(theta)
    e, a, b = next(free), next(free), next(free)
    alpha = fixed["alpha"] if fixed.get("alpha") is not None else next(free)
    beta = fixed["beta"] if fixed.get("beta") is not None else next(free)
    return e, a, b, alpha, beta, next(free)


def free_parameters(fixed: dict | None = None) -> int:
    fixed = fixed or {}
    return 6 - sum(fixed.get(k) is not None for k in ("alpha", "beta"))


def _objective(theta, log_n, log_s, annealed, log_l, fixed):
    """The Huber loss of the fit and its gradient in the free parameters."""
    e, a, b, alpha, beta, c = _unpack(theta, fixed)
    size, data = np.exp(a - alpha * log_n), np.exp(b - beta * log_s)
    predicted = np.maximum(np.exp(e) + size + data - c * annealed, 1e-12)
    r = np.log(predicted) - log_l
    w = np.clip(r, -HUBER_DELTA, HUBER_DELTA) / predicted  # huber'(r) times d log predicted / d predicted
    grad = [np.exp(e) * w.sum(), w @ size, w @ data]
    grad += [-(w @ (size * log_n))] if fixed.get("alpha") is None else []
    grad += [-(w @ (data * log_s))] if fixed.get("beta") is None else []
    return float(huber(r).sum()), np.array(grad + [-(w @ annealed)])


def initial_points(loss: np.ndarray, fixed: dict, floor: float = 0.0) -> list:
    """The grid of starts: E below the best loss seen (and not below `floor`), A and B over several decades,
    exponents 0.3 and 0.7, no annealing gain and a tenth of a bit."""
    lowest = float(np.min(loss))
    starts = sorted({math.log(max(share * lowest, floor)) for share in (0.5, 0.9)})
    grids = [starts, [0.0, 5.0, 10.0], [0.0, 5.0, 10.0]]
    grids += [[0.3, 0.7] for k in ("alpha", "beta") if fixed.get(k) is None]
    return [np.array(p) for p in itertools.product(*grids, [0.0, 0.1])]


def fit_law(n, area, annealed, loss, fixed: dict | None = None, starts: list | None = None,
            floor: float = 0.0) -> Law:
    """The law fitted to points (N, area, annealed share, loss); `fixed` may hold alpha and/or beta (held, not
    fitted); `starts`: initial free-parameter vectors (default: initial_points' grid); `floor`: the least loss
    the objective allows (E is held at or above it; 0: none)."""
    fixed = fixed or {}
    n, area, annealed, loss = (np.asarray(x, dtype=float) for x in (n, area, annealed, loss))
    if np.any(loss <= 0) or np.any(n <= 0) or np.any(area <= 0):
        raise ValueError("N, the area and the losses must be positive")
    if floor >= loss.min():
        raise ValueError(f"a loss of {loss.min():.4g} lies at or below the objective's floor {floor:.4g}")
    data = (np.log(n), np.log(area), annealed, np.log(loss), fixed)
    top = math.log(float(loss.max()))  # E and the gain C below the highest loss; log A, log B where exp is finite
    bottom = math.log(floor) if floor > 0 else -50.0
    bounds = [(bottom, top), (-50.0, 200.0), (-50.0, 200.0)] + [EXPONENT_BOUNDS] * (free_parameters(fixed) - 4)
    bounds += [(0.0, float(loss.max()))]
    best = None
    with threadpool_limits(1):  # L-BFGS-B's BLAS calls on 6-vectors: threads only wait on each other
        for start in starts if starts is not None else initial_points(loss, fixed, floor):
            result = minimize(_objective, start, args=data, method="L-BFGS-B", jac=True, bounds=bounds,
                              options={"ftol": 1e-13, "gtol": 1e-10})
            if best is None or result.fun < best.fun:
                best = result
    e, a, b, alpha, beta, c = _unpack(best.x, fixed)
    return Law(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=float(alpha), beta=float(beta), C=float(c))


def free_vector(law: Law, fixed: dict | None = None) -> np.ndarray:
    """The inverse of _unpack: a law's free parameters, to start a fit from it."""
    fixed = fixed or {}
    theta = [math.log(law.E), math.log(law.A), math.log(law.B)]
    theta += [getattr(law, k) for k in ("alpha", "beta") if fixed.get(k) is None]
    return np.array(theta + [law.C])


def bootstrap_laws(n, area, annealed, loss, runs, resamples: int, fixed: dict | None = None,
                   start: Law | None = None, seed: int = 0, floor: float = 0.0) -> list:
    """The law refitted to `resamples` resamples of the runs (`runs`: each point's run; whole runs drawn with
    replacement, as many as there are), each from the full fit `start` and a few grid points: the spread of
    these is the fit's uncertainty."""
    n, area, annealed, loss = (np.asarray(x, dtype=float) for x in (n, area, annealed, loss))
    fixed, runs = fixed or {}, np.asarray(runs)
    start = start or fit_law(n, area, annealed, loss, fixed, floor=floor)
    grid = initial_points(loss, fixed, floor)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(runs == r) for r in np.unique(runs)]
    laws = []
    for _ in range(resamples):
        pick = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        starts = [free_vector(start, fixed), *(grid[i] for i in rng.choice(len(grid), 4, replace=False))]
        laws.append(fit_law(n[pick], area[pick], annealed[pick], loss[pick], fixed, starts, floor))
    return laws


def interval(values, level: float = 0.95) -> list:
    """The central `level` interval of the finite values ([None, None] when there are none)."""
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if values.size == 0:
        return [None, None]
    tail = 50 * (1 - level)
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def crossover(gap, lo: float, hi: float, iterations: int = 100) -> dict:
    """Where the larger of two sizes starts to predict a lower loss than the smaller, within budgets [lo, hi],
    `gap(t)` the larger's predicted loss at budget t minus the smaller's: {"budget": t or None,
    "larger_better": "above" (past t), "throughout", "never" or "below" (before t)}. Bisection on log budget."""
    def at(log_t):
        return float(gap(math.exp(log_t)))

    a, b = math.log(lo), math.log(hi)
    ga, gb = at(a), at(b)
    if ga < 0 and gb < 0:
        return {"budget": None, "larger_better": "throughout"}
    if ga >= 0 and gb >= 0:
        return {"budget": None, "larger_better": "never"}
    for _ in range(iterations):
        mid = 0.5 * (a + b)
        if (at(mid) < 0) == (ga < 0):
            a = mid
        else:
            b = mid
    return {"budget": math.exp(0.5 * (a + b)), "larger_better": "above" if gb < 0 else "below"}
