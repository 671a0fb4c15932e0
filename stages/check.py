"""check: CI's regression gate. Compares reports/metrics.json with the committed reports/baseline.json
within `check.tolerance` (params.yaml) and exits 1 with a table of what regressed.

Scores (accuracy, BLEU, ...) regress when they fall by more than their tolerance in points; latency and
size regress when they grow by more than their tolerance as a fraction. A metric in the baseline that
is missing now is a regression; a new one is reported, not judged.

Usage: python -m stages.check            compare
       python -m stages.check --update   make the current metrics the baseline
"""
import json
import shutil
import sys
from pathlib import Path

from stages.lib import StageError, load_params, run_stage

METRICS = Path("reports/metrics.json")
BASELINE = Path("reports/baseline.json")
RELATIVE = ("latency_ms", "bytes_zip")  # lower is better, compared as fractions


def main(argv):
    params = load_params()
    if argv not in ([], ["--update"]):
        raise StageError("usage: python -m stages.check [--update]")
    if not METRICS.exists():
        raise StageError(f"{METRICS}: missing (run `dvc repro` first)")
    if argv == ["--update"]:
        shutil.copy(METRICS, BASELINE)
        print(f"{BASELINE} now holds the metrics of {METRICS}; commit it")
        return
    if not BASELINE.exists():
        raise StageError(f"{BASELINE}: no baseline (create one with `python -m stages.check --update`)")
    current, baseline = flatten(read(METRICS)), flatten(read(BASELINE))
    rows, regressed = [], 0
    for key in sorted(baseline.keys() | current.keys()):
        name = key.rsplit("/", 1)[-1]
        tolerance = next((t for prefix, t in params.check.tolerance.items() if name.startswith(prefix)), None)
        old, new = baseline.get(key), current.get(key)
        if new is None:
            status = "REGRESSED (missing)"
        elif old is None:
            status = "new"
        elif tolerance is None:
            status = "not checked (no tolerance)"
        elif name.startswith(RELATIVE):
            status = "REGRESSED" if new > old * (1 + tolerance) else "ok"
        else:
            status = "REGRESSED" if new < old - tolerance else "ok"
        regressed += status.startswith("REGRESSED")
        rows.append((key, fmt(old), fmt(new), fmt(tolerance), status))
    widths = [max(len(r[i]) for r in rows + [HEADER]) for i in range(len(HEADER))]
    for row in [HEADER] + rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    print(f"\n{regressed} of {len(rows)} metrics regressed against {BASELINE}")
    if regressed:
        sys.exit(1)


HEADER = ("metric", "baseline", "current", "tolerance", "status")


def read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise StageError(f"{path}: not valid JSON: {e}")


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}/"))
        else:
            flat[f"{prefix}{k}"] = float(v)
    return flat


def fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}"


if __name__ == "__main__":
    run_stage(main)
