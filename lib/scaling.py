"""The scaling law of final loss in model size and tokens, fitted to short runs (the size planner, issue 35).

L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, "approach 3"): N the non-embedding parameters
(lib/model_size.py), D the tokens a run trained by its end, L its final valid loss (bits). Fitted as they did:
a Huber loss (delta 1e-3) on log L, predicted log L = logsumexp(a - alpha log N, b - beta log D, e), minimized
by L-BFGS-B from a grid of initial points, the best kept. A budget t (seconds or updates) maps to tokens
through each size's measured rate, D = rate * t; so a crossover between two sizes is a budget, found by
bisection in log budget. Pure functions of arrays: no files."""
import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

HUBER_DELTA = 1e-3
NAMES = ("E", "A", "B", "alpha", "beta")
EXPONENT_BOUNDS = (0.01, 3.0)


@dataclass(frozen=True)
class Law:
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n, d):
        """Predicted final loss of N parameters trained on D tokens."""
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return self.E + self.A / n ** self.alpha + self.B / d ** self.beta

    def at_budget(self, n, rate, budget):
        """Predicted final loss of N parameters trained for `budget` at `rate` tokens per budget unit."""
        return self.loss(n, np.asarray(rate, dtype=float) * np.asarray(budget, dtype=float))

    def as_dict(self) -> dict:
        return asdict(self)


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r ** 2, delta * (a - 0.5 * delta))


def _unpack(theta, fixed: dict) -> tuple:
    """(e, a, b, alpha, beta) from the free parameters theta, exponents in `fixed` taken from there."""
    free = iter(theta)
    e, a, b = next(free), next(free), next(free)
    alpha = fixed["alpha"] if fixed.get("alpha") is not None else next(free)
    beta = fixed["beta"] if fixed.get("beta") is not None else next(free)
    return e, a, b, alpha, beta


def free_parameters(fixed: dict | None = None) -> int:
    fixed = fixed or {}
    return 5 - sum(fixed.get(k) is not None for k in ("alpha", "beta"))


def _objective(theta, log_n, log_d, log_l, fixed):
    """The Huber loss of the fit and its gradient in the free parameters."""
    e, a, b, alpha, beta = _unpack(theta, fixed)
    terms = np.array([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = terms.max(axis=0)
    exp = np.exp(terms - top)
    total = exp.sum(axis=0)
    r = top + np.log(total) - log_l                 # predicted log L (logsumexp of the terms) - measured
    w = np.clip(r, -HUBER_DELTA, HUBER_DELTA) * exp / total  # huber'(r) times d predicted / d term
    grad = [w[2].sum(), w[0].sum(), w[1].sum()]
    grad += [-(w[0] @ log_n)] if fixed.get("alpha") is None else []
    grad += [-(w[1] @ log_d)] if fixed.get("beta") is None else []
    return float(huber(r).sum()), np.array(grad)


def initial_points(loss: np.ndarray, fixed: dict) -> list:
    """The grid of starts: E below the best loss seen, A and B over several decades, exponents 0.3 and 0.7."""
    lowest = float(np.min(loss))
    grids = [[math.log(0.5 * lowest), math.log(0.9 * lowest)], [0.0, 5.0, 10.0], [0.0, 5.0, 10.0]]
    grids += [[0.3, 0.7] for k in ("alpha", "beta") if fixed.get(k) is None]
    return [np.array(p) for p in itertools.product(*grids)]


def fit_law(n, d, loss, fixed: dict | None = None, starts: list | None = None) -> Law:
    """The law fitted to end points (N, D, final loss); `fixed` may hold alpha and/or beta (held, not fitted);
    `starts`: initial free-parameter vectors (default: initial_points' grid)."""
    fixed = fixed or {}
    n, d, loss = (np.asarray(x, dtype=float) for x in (n, d, loss))
    if np.any(loss <= 0) or np.any(n <= 0) or np.any(d <= 0):
        raise ValueError("N, D and the losses must be positive")
    data = (np.log(n), np.log(d), np.log(loss), fixed)
    bounds = [(None, None)] * 3 + [EXPONENT_BOUNDS] * (free_parameters(fixed) - 3)
    best = None
    with threadpool_limits(1):  # L-BFGS-B's BLAS calls on 5-vectors: threads only wait on each other
        for start in starts if starts is not None else initial_points(loss, fixed):
            result = minimize(_objective, start, args=data, method="L-BFGS-B", jac=True, bounds=bounds,
                              options={"ftol": 1e-13, "gtol": 1e-10})
            if best is None or result.fun < best.fun:
                best = result
    e, a, b, alpha, beta = _unpack(best.x, fixed)
    return Law(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=float(alpha), beta=float(beta))


def free_vector(law: Law, fixed: dict | None = None) -> np.ndarray:
    """The inverse of _unpack: a law's free parameters, to start a fit from it."""
    fixed = fixed or {}
    theta = [math.log(law.E), math.log(law.A), math.log(law.B)]
    theta += [getattr(law, k) for k in ("alpha", "beta") if fixed.get(k) is None]
    return np.array(theta)


def bootstrap_laws(n, d, loss, resamples: int, fixed: dict | None = None, start: Law | None = None,
                   seed: int = 0) -> list:
    """The law refitted to `resamples` resamples of the end points (drawn with replacement), each from the
    full fit `start` and a few grid points: the spread of these is the fit's uncertainty."""
    n, d, loss = (np.asarray(x, dtype=float) for x in (n, d, loss))
    fixed = fixed or {}
    start = start or fit_law(n, d, loss, fixed)
    grid = initial_points(loss, fixed)
    rng = np.random.default_rng(seed)
    laws = []
    for _ in range(resamples):
        pick = rng.integers(0, len(loss), len(loss))
        starts = [free_vector(start, fixed), *(grid[i] for i in rng.choice(len(grid), 4, replace=False))]
        laws.append(fit_law(n[pick], d[pick], loss[pick], fixed, starts))
    return laws


def interval(values, level: float = 0.95) -> list:
    """The central `level` interval of the finite values ([None, None] when there are none)."""
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if values.size == 0:
        return [None, None]
    tail = 50 * (1 - level)
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def crossover(law: Law, small: tuple, large: tuple, lo: float, hi: float, iterations: int = 100) -> dict:
    """Where `large` (N, rate) starts to predict a lower loss than `small` (N, rate), within budgets [lo, hi]:
    {"budget": t or None, "larger_better": "above" (past t), "throughout", "never" or "below" (before t)}.
    Bisection on log budget of L_large(t) - L_small(t)."""
    def gap(log_t):
        t = math.exp(log_t)
        return float(law.at_budget(large[0], large[1], t) - law.at_budget(small[0], small[1], t))

    a, b = math.log(lo), math.log(hi)
    ga, gb = gap(a), gap(b)
    if ga < 0 and gb < 0:
        return {"budget": None, "larger_better": "throughout"}
    if ga >= 0 and gb >= 0:
        return {"budget": None, "larger_better": "never"}
    for _ in range(iterations):
        mid = 0.5 * (a + b)
        if (gap(mid) < 0) == (ga < 0):
            a = mid
        else:
            b = mid
    return {"budget": math.exp(0.5 * (a + b)), "larger_better": "above" if gb < 0 else "below"}

