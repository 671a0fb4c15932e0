"""The size plan's measured end points against its fitted law (issue 35): a full-budget or check run predicted at
its own tokens and at its budget, the sides of two sizes checked at the same fraction, and whether the predicted
order of the full-budget runs is the measured one. Pure functions of the law and the plan's rows."""


def compared(law, size, run, longest: float, final) -> dict:
    """A measured end point (a full-budget or check run) against the law: predicted at its own tokens (its own
    schedule's area), and at its budget by the calibration's rate (final(law, size, budget): the end of a run of
    that budget); reach: its tokens over the size's longest calibration run's."""
    own = float(law.loss(size.parameters, run.area, run.annealed))
    by_rate = float(final(law, size, run.budget))
    return {"budget": float(run.budget), "tokens": float(run.tokens), "measured": float(run.loss),
            "predicted": by_rate, "error": by_rate - float(run.loss), "predicted_at_tokens": own,
            "error_at_tokens": own - float(run.loss), "rate_ratio": float(run.tokens / run.budget) / size.rate,
            "reach": float(run.tokens) / longest}


def check_pairs(checks: list, tolerance: float) -> list:
    """For two sizes checked at the same fraction: which one measured lower, and which the law predicts lower,
    at their own tokens and at their budget by the calibration's rates (the basis of the crossovers). A verdict
    only where the measured losses differ by more than `tolerance`; a prediction within it is a tie, no side."""
    pairs = []
    for i, a in enumerate(checks):
        for b in checks[i + 1:]:
            if a["fraction"] != b["fraction"]:
                continue
            measured = b["measured"] - a["measured"]
            pair = {"fraction": a["fraction"], "sizes": [a["size"], b["size"]],
                    "measured_lower": a["size"] if measured > 0 else b["size"], "measured_gap": abs(measured)}
            for basis, key in (("tokens", "predicted_at_tokens"), ("budget", "predicted")):
                predicted = b[key] - a[key]
                tie = abs(predicted) <= tolerance
                pair[basis] = {"predicted_lower": a["size"] if predicted > 0 else b["size"],
                               "predicted_gap": abs(predicted), "tie": tie,
                               "agrees": None if abs(measured) <= tolerance else
                               not tie and (measured > 0) == (predicted > 0)}
            pairs.append(pair)
    return pairs


def ranking(predictions: list, tolerance: float) -> dict:
    """Whether the predicted order of the full-budget runs is the measured one, wherever the measured
    losses differ by more than `tolerance`."""
    full = [p for p in predictions if "full" in p]
    pairs = [(a, b) for i, a in enumerate(full) for b in full[i + 1:]
             if abs(a["full"]["measured"] - b["full"]["measured"]) > tolerance]
    wrong = [f"{a['size']} / {b['size']}" for a, b in pairs
             if (a["full"]["measured"] < b["full"]["measured"]) !=
             (a["full"]["predicted_at_tokens"] < b["full"]["predicted_at_tokens"])]
    return {"pairs": len(pairs), "wrong": wrong, "tolerance": tolerance}
