"""Where the time of a `dvc repro` goes, stage by stage and by stage kind, from its timestamped log.

`make repro-timed` writes reports/repro.log: every line of `dvc repro` prefixed with the seconds since it
started. A stage's time runs from its "Running stage 'NAME':" line to the next stage's (the last to the
end of the log), so it includes the stage's start-up and DVC's own bookkeeping after it. The total is
the sum of the stages' times (DVC's second of start-up before the first stage is left out).

Several logs, oldest first, give each stage's latest run: a later `dvc repro` that re-ran some stages
(after a params change) replaces their times and keeps the others'.

Usage: python -m bench.repro_times reports/repro.log [LATER.log ...] [--json reports/repro-times.json]
"""
import argparse
import json
import re
from collections import defaultdict

STAGE = re.compile(r"^(\d+(?:\.\d+)?) Running stage '([^']+)'")
# what a reader weighs against the training budgets: training, compression + evaluation, the rest
KINDS = {"pretrain": "training", "finetune": "training", "finetune_random": "training", "train_mt": "training",
         "compress_glue": "compress + evaluate", "compress_glue_random": "compress + evaluate",
         "compress_mt": "compress + evaluate", "evaluate_glue": "compress + evaluate",
         "evaluate_glue_random": "compress + evaluate", "evaluate_mt": "compress + evaluate"}


def stage_times(lines: list[str]) -> list[tuple[str, float]]:
    starts, end = [], 0.0
    for line in lines:
        stamp = line.split(" ", 1)[0]
        if stamp.replace(".", "", 1).isdigit():
            end = float(stamp)
        match = STAGE.match(line)
        if match:
            starts.append((match.group(2), float(match.group(1))))
    return [(name, (starts[i + 1][1] if i + 1 < len(starts) else end) - t) for i, (name, t) in enumerate(starts)]


def latest_runs(logs: list[list[str]]) -> list[tuple[str, float]]:
    """Each stage's time in the last of `logs` (oldest first) that ran it, in first-run order."""
    times = {}
    for lines in logs:
        times.update(stage_times(lines))
    return list(times.items())


def summary(times: list[tuple[str, float]]) -> dict:
    total = sum(seconds for _, seconds in times)
    kinds = defaultdict(float)
    for name, seconds in times:
        kinds[KINDS.get(name.split("@")[0], "data, tabulate, report")] += seconds
    return {"total_s": round(total, 1), "stages": {n: round(s, 1) for n, s in times},
            "kinds": {k: {"seconds": round(s, 1), "share": round(s / total, 3)} for k, s in sorted(kinds.items())}}


def markdown(result: dict) -> str:
    rows = [f"| {k} | {v['seconds'] / 60:.1f} | {100 * v['share']:.0f}% |" for k, v in result["kinds"].items()]
    return ("| stage kind | minutes | share |\n|---|---|---|\n" + "\n".join(rows) +
            f"\n| total | {result['total_s'] / 60:.1f} | 100% |\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", metavar="log", help="timestamped dvc repro logs, oldest first")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    logs = []
    for path in args.logs:
        with open(path) as f:
            logs.append(f.read().splitlines())
    result = summary(latest_runs(logs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print(markdown(result))


if __name__ == "__main__":
    main()
