"""The regression gate's rules: scores exact where a run repeats bit for bit, within tolerance elsewhere,
timings only on the same hardware."""
import yaml

from stages import check

TOLERANCE = {"accuracy": 2.0, "bleu": 2.0, "latency_ms": 1.0, "bytes_zip": 0.01}
HERE = {"cpu": ["Some CPU [avx2 avx512f]"], "threads": ["2"]}
THERE = {"cpu": ["Other CPU [avx2]"], "threads": ["2"]}


def side(hardware, deterministic=True, **values):
    return {"hardware": hardware, "deterministic": deterministic,
            "metrics": {"sst2": {"S": {"accuracy_fp32": 80.0, "latency_ms_onnx_int8": 4.0,
                                       "bytes_zip_onnx_int8": 1000, **values}}}}


def verdicts(baseline, run):
    rows, failed = check.compare(baseline, run, TOLERANCE)
    return {key.rsplit("/", 1)[-1]: (rule, status) for key, _, _, rule, status in rows}, failed


def test_a_deterministic_run_on_the_same_hardware_must_repeat_its_scores_and_sizes_exactly():
    same, failed = verdicts(side(HERE), side(HERE))
    assert failed == 0 and same["accuracy_fp32"] == ("exact", "ok") and same["bytes_zip_onnx_int8"] == ("exact", "ok")
    for changed in ({"accuracy_fp32": 80.5}, {"accuracy_fp32": 79.9}, {"bytes_zip_onnx_int8": 1001}):
        result, failed = verdicts(side(HERE), side(HERE, **changed))
        assert failed == 1 and result[next(iter(changed))] == ("exact", "CHANGED")


def test_elsewhere_or_with_wall_clock_budgets_scores_and_sizes_get_their_tolerance():
    for baseline, run in ((side(HERE), side(THERE, accuracy_fp32=78.5, bytes_zip_onnx_int8=1005)),
                          (side(HERE, False), side(HERE, False, accuracy_fp32=78.5, bytes_zip_onnx_int8=1005))):
        result, failed = verdicts(baseline, run)
        assert failed == 0
        assert result["accuracy_fp32"] == ("at most -2 points", "ok")
        assert result["bytes_zip_onnx_int8"] == ("at most +1%", "ok")
    result, failed = verdicts(side(HERE), side(THERE, accuracy_fp32=77.9, bytes_zip_onnx_int8=1011))
    assert failed == 2 and result["accuracy_fp32"][1] == result["bytes_zip_onnx_int8"][1] == "REGRESSED"


def test_a_timing_on_other_hardware_is_not_comparable_whatever_its_value():
    for latency in (1.0, 4.0, 400.0):
        result, failed = verdicts(side(HERE), side(THERE, latency_ms_onnx_int8=latency))
        assert failed == 0 and result["latency_ms_onnx_int8"] == ("timing, other hardware", "not comparable")
    # a baseline that recorded no hardware (the old format) compares no timing either
    result, _ = verdicts({**side(HERE), "hardware": None}, side(HERE, latency_ms_onnx_int8=400.0))
    assert result["latency_ms_onnx_int8"][1] == "not comparable"


def test_a_timing_on_the_same_hardware_passes_within_its_tolerance_and_fails_beyond():
    result, failed = verdicts(side(HERE), side(HERE, latency_ms_onnx_int8=7.9))
    assert failed == 0 and result["latency_ms_onnx_int8"] == ("at most +100%", "ok")
    result, failed = verdicts(side(HERE), side(HERE, latency_ms_onnx_int8=8.1))
    assert failed == 1 and result["latency_ms_onnx_int8"] == ("at most +100%", "REGRESSED")


def test_a_metric_gone_missing_fails_and_a_new_one_is_only_reported():
    baseline, run = side(HERE), side(HERE, bleu_fp32=20.0)
    del run["metrics"]["sst2"]["S"]["accuracy_fp32"]
    result, failed = verdicts(baseline, run)
    assert failed == 1 and result["accuracy_fp32"][1] == "REGRESSED (missing)" and result["bleu_fp32"][1] == "new"


def test_only_update_budgets_on_fixed_threads_count_as_deterministic():
    from conftest import REPO, read_params
    from lib.schema import Params
    p = read_params(REPO)
    assert not check.deterministic(Params.model_validate(p))  # the default profile: wall-clock budgets
    for stage in ("pretrain", "finetune", "train_mt"):
        p[stage]["recipe"]["budget"] = {"seconds": None, "updates": 10}
    p["training"]["threads"] = 2
    assert check.deterministic(Params.model_validate(p))
    p["training"]["threads"] = None  # torch's default: every core of whatever machine runs it
    assert not check.deterministic(Params.model_validate(p))
    p["training"]["threads"] = 2
    p["compress"]["recovery"] = {"seconds": 5.0, "updates": None}
    assert not check.deterministic(Params.model_validate(p))


def test_markdown_table_for_a_pull_request_comment():
    rows, _ = check.compare(side(HERE), side(THERE, latency_ms_onnx_int8=9.0), TOLERANCE)
    table = check.markdown(rows)
    assert table.splitlines()[0] == "| metric | baseline | current | rule | status |"
    assert "| sst2/S/latency_ms_onnx_int8 | 4 | 9 | timing, other hardware | not comparable |" in table


def with_intervals(run, accuracy, low, high):
    """`run` with its accuracy_fp32 and that score's confidence interval."""
    run["metrics"]["sst2"]["S"]["accuracy_fp32"] = accuracy
    return {**run, "intervals": {"sst2/S/accuracy_fp32": [low, high]}}


def test_with_wall_clock_budgets_a_score_regresses_only_when_its_interval_lies_wholly_below_the_baselines():
    baseline = with_intervals(side(HERE, False), 80.0, 77.0, 83.0)
    # 4 points down, twice the tolerance, but inside the run-to-run spread the intervals show
    result, failed = verdicts(baseline, with_intervals(side(HERE, False), 76.0, 73.0, 79.0))
    assert failed == 0 and result["accuracy_fp32"] == ("interval not wholly below", "ok")
    result, failed = verdicts(baseline, with_intervals(side(HERE, False), 73.5, 70.5, 76.5))
    assert failed == 1 and result["accuracy_fp32"] == ("interval not wholly below", "REGRESSED")
    # on other hardware the same seconds bought another number of updates: reported, not judged
    result, failed = verdicts(baseline, with_intervals(side(THERE, False), 60.0, 57.0, 63.0))
    assert failed == 0 and result["accuracy_fp32"] == ("wall-clock score, other hardware", "not comparable")
    # a deterministic baseline against a wall-clock run: the run's spread is the same
    deterministic_baseline = with_intervals(side(HERE), 80.0, 77.0, 83.0)
    result, failed = verdicts(deterministic_baseline, with_intervals(side(HERE, False), 76.0, 73.0, 79.0))
    assert failed == 0 and result["accuracy_fp32"][0] == "interval not wholly below"
    # the other metrics keep their rules; the table shows the intervals beside the values
    assert result["bytes_zip_onnx_int8"] == ("at most +1%", "ok")
    rows, _ = check.compare(baseline, with_intervals(side(HERE, False), 76.0, 73.0, 79.0), TOLERANCE)
    assert ("sst2/S/accuracy_fp32", "80 [77, 83]", "76 [73, 79]", "interval not wholly below", "ok") in rows


def test_deterministic_runs_keep_their_exact_and_tolerance_rules_whatever_the_intervals():
    baseline = with_intervals(side(HERE), 80.0, 77.0, 83.0)
    result, failed = verdicts(baseline, with_intervals(side(HERE), 79.9, 77.0, 82.9))
    assert failed == 1 and result["accuracy_fp32"] == ("exact", "CHANGED")
    result, failed = verdicts(baseline, with_intervals(side(THERE), 77.5, 74.5, 80.5))
    assert failed == 1 and result["accuracy_fp32"] == ("at most -2 points", "REGRESSED")


def test_a_baseline_without_intervals_is_given_the_current_runs_width():
    baseline = side(HERE, False)  # accuracy 80, made before baselines recorded intervals: taken as [77, 83]
    result, failed = verdicts(baseline, with_intervals(side(HERE, False), 76.0, 73.0, 79.0))
    assert failed == 0 and result["accuracy_fp32"] == ("interval not wholly below (baseline: current width)", "ok")
    result, failed = verdicts(baseline, with_intervals(side(HERE, False), 73.9, 70.9, 76.9))
    assert failed == 1 and result["accuracy_fp32"][1] == "REGRESSED"


def test_the_runs_intervals_are_those_of_the_rows_behind_its_metrics(tmp_path, monkeypatch):
    import csv
    from lib.variants import EVAL_FIELDS
    from stages import tabulate
    row = {"task": "sst2", "size": "S", "init": "pretrained", "target_sparsity": "0.0", "split": "dev",
           "latency_ms": "4.0", "bytes_zip": "1000"}
    rows = [{**row, "format": "fairseq fp32", "metric": "accuracy", "value": "80.0", "ci_low": "77.0",
             "ci_high": "83.0"},
            {**row, "format": "fairseq fp32", "metric": "loss", "value": "0.4", "ci_low": "0.3", "ci_high": "0.5"},
            {**row, "format": "ONNX int8", "metric": "accuracy", "value": "79.0", "ci_low": "76.0", "ci_high": "82.0"},
            {**row, "format": "ONNX int8", "metric": "accuracy", "value": "60.0", "ci_low": "57.0", "ci_high": "63.0",
             "target_sparsity": "0.5"}]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports").mkdir()
    with open(check.VARIANTS, "w", newline="") as f:
        writer = csv.DictWriter(f, EVAL_FIELDS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    intervals = check.run_intervals()
    assert intervals == {"sst2/S/accuracy_fp32": [77.0, 83.0], "sst2/S/accuracy_onnx_int8": [76.0, 82.0]}
    scores = {key for key in check.flatten(tabulate.headline(rows)) if key.rsplit("/", 1)[-1].startswith("accuracy")}
    assert scores == intervals.keys()
