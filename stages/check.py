"""check: CI's regression gate. Compares reports/metrics.json with the baseline that params.yaml's
`check.baseline` names (each profile has its own) and exits 1 with a table of what regressed.

Each metric is judged by the rule that fits what it measures and where it was measured:
- scores (accuracy, BLEU, ...) and sizes (zipped bytes): **exact** when the run repeats bit for bit, that
  is every training budget counts updates (profiles/ci.yaml) and the hardware (CPU model and flags, thread
  counts) is the baseline's; any change is then the code's doing.
- scores where either run trained under wall-clock budgets (the default profile): such a budget trains as
  far as the machine's speed allows, so two runs of the same code differ by about as much as the score's
  95% confidence interval (evaluation's bootstrap, in reports/variants.csv). A score regressed only when its
  interval lies wholly below the baseline's. A baseline that recorded no intervals (made before they were)
  is given the current run's interval, moved to the baseline's value. On other hardware such a score is
  reported as not comparable, like a timing: the same seconds train another number of updates there (seen:
  an Intel Xeon trained the default translators 14-24% fewer updates than the AMD EPYC of the baseline, and
  L2-H256 lost 6.7 BLEU), so the difference measures the machine as much as the code. The CI profile, whose
  budgets count updates, is the gate across machines.
- otherwise (a deterministic run on other hardware, whose CPUs run other kernels; a size; a score without
  an interval), within `check.tolerance`: a score may fall by that many points, a size grow by that fraction.
- timings (latency): only on the baseline's hardware, where they may grow by their tolerance (a
  fraction); on other hardware they are reported as not comparable, neither passed nor failed.
A metric in the baseline that is missing now is a regression; a new one is reported, not judged.
The baseline records the hardware, whether its run was deterministic and the scores' intervals; the run's
hardware and intervals are read from reports/variants.csv (evaluation records them in every row).

Usage: python -m stages.check [--md]     compare (--md: a markdown table, e.g. for a pull-request comment)
       python -m stages.check --update   make the current metrics the baseline
"""
import csv
import json
import sys
from pathlib import Path

from lib.errors import StageError
from lib.files import write_json
from lib.params import load_params
from lib.stage import run_stage
from lib.variants import headline_rows

METRICS = Path("reports/metrics.json")
VARIANTS = Path("reports/variants.csv")
TIMINGS = ("latency_ms",)   # lower is better, compared as fractions, only on the same hardware
SIZES = ("bytes_zip",)      # lower is better, compared as fractions where not exact
FAILING = ("REGRESSED", "CHANGED")
HEADER = ("metric", "baseline", "current", "rule", "status")


def main(argv):
    params = load_params()
    if argv not in ([], ["--md"], ["--update"]):
        raise StageError("usage: python -m stages.check [--md | --update]")
    baseline_path = Path(params.check.baseline)
    if not METRICS.exists():
        raise StageError(f"{METRICS}: missing (run `dvc repro` first)")
    run = {"hardware": run_hardware(), "deterministic": deterministic(params), "metrics": read(METRICS),
           "intervals": run_intervals()}
    if argv == ["--update"]:
        write_json(baseline_path, run)
        print(f"{baseline_path} now holds the metrics of {METRICS}, their intervals and the hardware they were "
              "measured on; commit it")
        return
    if not baseline_path.exists():
        raise StageError(f"{baseline_path}: no baseline (create one with `python -m stages.check --update`)")
    baseline = read(baseline_path)
    rows, failed = compare(baseline, run, params.check.tolerance)
    print(markdown(rows) if argv == ["--md"] else text_table(rows))
    same = "the same hardware" if baseline.get("hardware") == run["hardware"] else "other hardware"
    print(f"\n{failed} of {len(rows)} metrics regressed or changed against {baseline_path}; "
          f"measured on {same}: {describe(run['hardware'])}; baseline: {describe(baseline.get('hardware'))}")
    if failed:
        sys.exit(1)


def compare(baseline: dict, run: dict, tolerances: dict) -> tuple[list, int]:
    """[(metric, baseline, current, rule, status)] for every metric of either, and how many failed."""
    same_hardware = baseline.get("hardware") is not None and baseline["hardware"] == run["hardware"]
    both_deterministic = bool(baseline.get("deterministic") and run["deterministic"])
    exact = same_hardware and both_deterministic
    old_metrics, new_metrics = flatten(baseline["metrics"]), flatten(run["metrics"])
    old_intervals, new_intervals = baseline.get("intervals") or {}, run.get("intervals") or {}
    rows, failed = [], 0
    for key in sorted(old_metrics.keys() | new_metrics.keys()):
        name = key.rsplit("/", 1)[-1]
        tolerance = next((t for prefix, t in tolerances.items() if name.startswith(prefix)), None)
        old, new = old_metrics.get(key), new_metrics.get(key)
        intervals = None
        if not both_deterministic and old is not None and key in new_intervals:
            intervals = (old_intervals.get(key) or moved(new_intervals[key], new, old)), new_intervals[key]
        rule, status = judge(name, old, new, tolerance, exact, same_hardware, intervals)
        if intervals and key not in old_intervals:
            rule += " (baseline: current width)"
        failed += status.startswith(FAILING)
        rows.append((key, fmt(old, intervals and intervals[0]), fmt(new, intervals and intervals[1]), rule, status))
    return rows, failed


def judge(name: str, old, new, tolerance, exact: bool, same_hardware: bool, intervals=None) -> tuple[str, str]:
    """(the rule applied, its verdict); a verdict that starts with one of FAILING fails the check.
    intervals: the baseline's and the run's confidence interval of a score from wall-clock budgets."""
    if new is None:
        return "present", "REGRESSED (missing)"
    if old is None:
        return "-", "new"
    if name.startswith(TIMINGS):
        if not same_hardware:
            return "timing, other hardware", "not comparable"
        if tolerance is None:
            return "no tolerance", "not checked"
        return f"at most +{tolerance:.0%}", "REGRESSED" if new > old * (1 + tolerance) else "ok"
    if exact:
        return "exact", "ok" if new == old else "CHANGED"
    if intervals:
        if not same_hardware:  # the budget bought other hardware another number of updates
            return "wall-clock score, other hardware", "not comparable"
        (old_low, _), (_, new_high) = intervals
        return "interval not wholly below", "REGRESSED" if new_high < old_low else "ok"
    if tolerance is None:
        return "no tolerance", "not checked"
    if name.startswith(SIZES):
        return f"at most +{tolerance:.0%}", "REGRESSED" if new > old * (1 + tolerance) else "ok"
    return f"at most -{tolerance:g} points", "REGRESSED" if new < old - tolerance else "ok"


def deterministic(params) -> bool:
    """Whether the run repeats bit for bit: no training budget (or recovery) counts seconds, and the CPU
    thread count is fixed (torch's default follows the machine's cores)."""
    budgets = [params.pretrain.recipe.budget, params.finetune.recipe.budget, params.train_mt.recipe.budget, params.compress.recovery]
    return all(b.seconds is None for b in budgets) and params.training.threads is not None


def run_intervals() -> dict:
    """{metric key: [low, high]}: the confidence interval of each score of reports/metrics.json, from the
    rows of reports/variants.csv that tabulate took it from."""
    if not VARIANTS.exists():
        return {}
    with open(VARIANTS) as f:
        rows = list(csv.DictReader(f))
    return {f"{task}/{size}/{r['metric']}_{key}": [float(r["ci_low"]), float(r["ci_high"])]
            for task, size, key, r in headline_rows(rows) if r["ci_low"] and r["ci_high"]}


def moved(interval: list, value: float, to: float) -> list:
    """`interval` of `value`, shifted to `to`: the interval an old baseline did not record, taken as wide as
    the current run's (the same test set and model size)."""
    return [bound + to - value for bound in interval]


def run_hardware() -> dict | None:
    """The CPUs and thread counts that evaluated the variants (None before any evaluation)."""
    if not VARIANTS.exists():
        return None
    with open(VARIANTS) as f:
        rows = list(csv.DictReader(f))
    return {"cpu": sorted({r["hardware"] for r in rows}), "threads": sorted({r["threads"] for r in rows})}


def describe(hardware: dict | None) -> str:
    if not hardware:
        return "not recorded"
    return f"{', '.join(hardware['cpu'])}, {', '.join(hardware['threads'])} threads"


def read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise StageError(f"{path}: not valid JSON: {e}")
    if path != METRICS and "metrics" not in data:  # a baseline of the metrics alone: hardware unknown
        data = {"hardware": None, "deterministic": False, "metrics": data}
    return data


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}/"))
        else:
            flat[f"{prefix}{k}"] = float(v)
    return flat


def fmt(value, interval=None) -> str:
    if value is None:
        return "-"
    shown = str(int(value)) if value.is_integer() else f"{value:.6g}"  # sizes in full: they compare exactly
    return f"{shown} [{interval[0]:.4g}, {interval[1]:.4g}]" if interval else shown


def text_table(rows) -> str:
    widths = [max(len(r[i]) for r in rows + [HEADER]) for i in range(len(HEADER))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [HEADER] + rows)


def markdown(rows) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


if __name__ == "__main__":
    run_stage(main)
