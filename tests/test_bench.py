"""The benchmark suite (bench/) runs end to end at a tiny size and writes every section. Benchmarks print
numbers; this only keeps the code working, so nothing here asserts a speed."""
import json
from pathlib import Path

from conftest import set_params
from stages import compress


def positive(*values):
    return all(isinstance(v, (int, float)) and v > 0 for v in values)


def test_quick_benchmark_writes_json_and_markdown(in_trained_project):
    def edit(p):  # deployment models only: dense fp32, ONNX fp32 and int8
        p["compress"] = {"sparsities": [0.0], "pruning": "global", "bits": [8], "granularity": "channel",
                         "onnx_sparsities": [0.0], "int8_min_agreement": 0.9, "int8_check_examples": 32,
                         "recovery": {"seconds": None, "updates": None}}
        p["evaluate"]["threads"] = 1
    set_params(in_trained_project, edit)
    from bench import memory
    from bench.__main__ import PRELOAD, main
    memory.preload(PRELOAD)  # --quick's forkserver imports its libraries meanwhile
    compress.main(["glue", "T1", "sst2"])
    compress.main(["mt", "T1"])
    checkpoint = Path("models/pretrain/T1/checkpoint.pt")
    before = (checkpoint.stat().st_ino, checkpoint.stat().st_mtime_ns)
    main(["--quick", "--sizes", "T1", "--probe", "pretrain"])
    assert (checkpoint.stat().st_ino, checkpoint.stat().st_mtime_ns) == before  # the probe never writes here

    result = json.loads(Path("reports/bench.json").read_text())
    assert {"hardware", "settings", "training", "deployment", "overhead", "memory", "targets"} <= set(result)
    assert result["hardware"]["cpu"] and "torch" in result["hardware"]["versions"]

    [train] = result["training"]
    assert train["size"] == "T1"
    assert positive(train["ratio"], *(train[loop][k] for loop in ("fairseq", "fairseq_bf16", "transformers")
                                      for k in ("tokens_per_s", "peak_rss_mb", "updates_timed")))
    # on CPU fairseq is timed in fp32 and in the stages' bf16: autocast around fp32 weights, not fairseq's --bf16
    assert result["settings"]["training_precision"] == "fp32+bf16" and train["precisions"] == ["fp32", "bf16"]
    assert [train[k]["precision"] for k in ("fairseq", "fairseq_bf16", "transformers")] == ["fp32", "bf16", "fp32"]
    assert not train["fairseq"]["autocast_bf16"] and train["fairseq_bf16"]["autocast_bf16"]
    assert train["fairseq"]["weights_dtype"] == train["fairseq_bf16"]["weights_dtype"] == ["float32"]
    assert train["tokens_per_s"] == {"fp32": train["fairseq"]["tokens_per_s"],
                                     "bf16": train["fairseq_bf16"]["tokens_per_s"]}
    assert positive(train["bf16_speedup"]) and train["cpu_flags"] == result["hardware"]["cpu_flags"]
    bf16_target = train["target_bf16"]  # T1 is the largest size benchmarked
    if {"avx512_bf16", "amx_bf16"} & set(result["hardware"]["cpu_flags"]):
        assert bf16_target["pass"] in (True, False) and bf16_target["margin"] == round(train["bf16_speedup"] - 1.5, 4)
    else:
        assert bf16_target["pass"] is None and bf16_target["note"] == "not applicable: no bf16 instructions"

    [glue] = result["deployment"]["glue"]  # T1-rte was never fine-tuned: skipped
    [mt] = result["deployment"]["mt"]
    assert glue["model"] == "T1-sst2" and glue["source"] == "models/compressed/T1-sst2" and mt["model"] == "mt-T1"
    for row, metric in ((glue, "accuracy"), (mt, "bleu")):
        for fmt in ("pytorch_fp32", "onnx_fp32", "onnx_int8", "onnx_int4"):
            assert positive(row[fmt]["latency_ms"], row[fmt]["throughput"], row[fmt]["peak_rss_mb"])
            assert 0 <= row[fmt][metric] <= 100
        assert positive(row["int8_speedup_batch"], row["int8_speedup_batch1"], row["int8_over_onnx_fp32_batch"],
                        row["int4_zip_ratio"])
        assert row["onnx_int8"]["quantization"] in ("u8s8", "u8s8-reduce-range", "u8u8")
        assert 0 < row["onnx_int8"]["agreement"] <= 1 and row["onnx_int4"]["quantization"].startswith("s4")
    # T1 is the largest size benchmarked, mt-T1 the last translation size
    assert {"target_speedup", "target_over_onnx", "target_batch1", "target_accuracy", "target_int4_bytes",
            "target_int4_accuracy"} <= set(glue)
    assert {"target_speedup", "target_batch1", "target_accuracy"} <= set(mt)

    overhead = result["overhead"]
    assert overhead["dvc"]["noop_repro_s"] is None and "dvc status failed" in overhead["dvc"]["skipped"]  # no DVC repo
    assert positive(overhead["startup"]["stage_bad_args_s"]["pretrain"])  # --quick: no separate import timing
    [probe] = overhead["budget_utilisation"]
    assert "skipped" not in probe, probe
    assert probe["stage"] == "pretrain" and probe["updates"] == 12  # the tiny project's update budget
    assert positive(probe["train_steps_s"], probe["startup_s"], probe["budget_clock_s"])
    assert probe["train_steps_s"] < probe["wall_s"] and 0 < probe["utilisation"] < 1

    assert len(result["memory"]) == 3 + 2 * 4 and all(positive(m["peak_rss_mb"]) for m in result["memory"])
    assert all({"name", "value", "goal", "pass", "margin"} <= set(t) for t in result["targets"])
    assert {t["pass"] for t in result["targets"]} <= {True, False, None}
    markdown = Path("reports/bench.md").read_text()
    assert "## Targets" in markdown and "## Training throughput" in markdown and "mt-T1" in markdown
    assert "| size | fp32 tokens/s | bf16 tokens/s | bf16 / fp32 | target |" in markdown
    assert "training tokens/s, bf16 / fp32, T1 (largest size)" in markdown
    assert f"on cpu ({result['hardware']['cpu']}" in markdown  # the training figures name the CPU and its flags

    # a missed speed or size target gets what its profile shows (T1's targets may pass: misses are forced here)
    from bench import deployment, report
    for row, key in ((glue, "target_speedup"), (glue, "target_int4_bytes"), (mt, "target_batch1")):
        row[key]["pass"] = False
    result["targets"] = [t for row in (glue, mt) for k, t in row.items() if k.startswith("target")]
    deployment.explain_misses(result)
    assert "int8 operators sum to" in glue["target_speedup"]["why"] and "tokenizer" in glue["target_speedup"]["why"]
    assert "4-bit codes" in glue["target_int4_bytes"]["why"] and "scales" in glue["target_int4_bytes"]["why"]
    assert "inside ONNX Runtime's session runs" in mt["target_batch1"]["why"]
    assert "Where each miss goes" in report.markdown(result) and glue["target_speedup"]["why"] in report.markdown(result)

    from bench import ort_profile
    profiled = ort_profile.main(["T1-sst2", "--repeats", "2", "--threads", "1", "--batch", "4"])
    for fmt in ("fp32", "int8"):
        assert positive(profiled[fmt]["wall_ms"], profiled[fmt]["wall_spinning_ms"], *profiled[fmt]["ops"].values())
    quantized = [[op for op in profiled[fmt]["ops"] if "Integer" in op or "Quant" in op] for fmt in ("fp32", "int8")]
    assert quantized[1] and not quantized[0]  # int8 kernels in the int8 model only


def test_bf16_target_needs_bf16_instructions_and_two_precisions():
    from bench.report import add_targets

    def target(speedup, flags, device="cpu"):
        results = {"hardware": {"cpu_flags": flags}, "settings": {"largest_size": "B", "training_device": device},
                   "training": [{"size": s, "ratio": 1.0, "bf16_speedup": speedup if s == "B" else 9.0}
                                for s in ("A", "B")]}
        [t] = [t for t in add_targets(results) if "bf16" in t["name"]]
        assert t["name"] == "training tokens/s, bf16 / fp32, B (largest size)" and t["goal"] == ">= 1.5"
        return t["pass"], t["margin"], t["note"]

    assert target(2.0, ["avx2", "avx512_bf16"]) == (True, 0.5, "")
    assert target(1.2, ["avx2", "amx_bf16"]) == (False, -0.3, "")
    assert target(1.2, ["avx2", "avx512f"]) == (None, None, "not applicable: no bf16 instructions")
    assert target(None, [], "cuda") == (None, None, "not applicable: cuda trains in one precision only")


def test_repro_times_takes_each_stage_from_its_latest_log(tmp_path):
    """bench.repro_times: a stage lasts from its "Running stage" line to the next (the last to the log's
    end); a later log that re-ran some stages replaces their times and keeps the others'."""
    from bench import repro_times
    full = tmp_path / "repro.log"
    full.write_text("0.5 Running stage 'prepare_mlm':\n10.0 Running stage 'pretrain@A':\n110.0 some output\n"
                    "110.5 Running stage 'finetune@A-sst2':\n150.5 Running stage 'evaluate_glue@A-sst2':\n160.5 done\n")
    later = tmp_path / "repro-finetune.log"
    later.write_text("1.0 Running stage 'finetune@A-sst2':\n81.0 Running stage 'evaluate_glue@A-sst2':\n93.0 done\n")
    out = tmp_path / "times.json"
    repro_times.main([str(full), "--json", str(out)])
    once = json.loads(out.read_text())
    assert once["stages"] == {"prepare_mlm": 9.5, "pretrain@A": 100.5, "finetune@A-sst2": 40.0,
                              "evaluate_glue@A-sst2": 10.0}
    assert once["total_s"] == 160.0 and once["kinds"]["training"]["seconds"] == 140.5
    repro_times.main([str(full), str(later), "--json", str(out)])
    latest = json.loads(out.read_text())
    assert latest["stages"] == {"prepare_mlm": 9.5, "pretrain@A": 100.5, "finetune@A-sst2": 80.0,
                                "evaluate_glue@A-sst2": 12.0}
    assert latest["total_s"] == 202.0
    assert latest["kinds"]["compress + evaluate"] == {"seconds": 12.0, "share": round(12.0 / 202.0, 3)}


def test_loader_target_counts_workers_up_to_what_training_receives():
    """bench.loader: auto's workers on a 16-core node add up their rates, but no faster than the training
    process receives batches (1 / its CPU time a batch with workers)."""
    from bench.loader import targets
    from lib.devices import AUTO_CUDA_WORKERS
    report = {"per_worker": {"mlm": 100.0}, "receive_per_s": {"mlm": 300.0}, "gpu": {"mlm": {"steps_per_s": 100.0}}}
    [row] = targets(report)
    assert row["workers"] == AUTO_CUDA_WORKERS and row["value"] == 3.0 and row["pass"] is True
    [row] = targets({**report, "receive_per_s": {"mlm": 200.0}})
    assert row["value"] == 2.0 and row["pass"] is False and row["workers_needed"] == "none suffice"
    [row] = targets({**report, "receive_per_s": {}})  # no worker rows measured: the workers' rates alone
    assert row["value"] == AUTO_CUDA_WORKERS * 100.0 / 100.0 and row["workers_needed"] == 3
