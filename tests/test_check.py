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
