"""The targets, checked beside each measured value, and the markdown report of a benchmark run; the paper
profile's params, which the rehearsals and the loader bench measure."""
import sys
from pathlib import Path

import yaml

from bench.deployment import FORMATS

REPO = Path(__file__).resolve().parents[1]


def paper_params() -> dict:
    """params.yaml with profiles/paper.yaml merged (profiles/overrides.merge), as `make repro PROFILE=paper` runs."""
    sys.path.insert(0, str(REPO / "profiles"))
    from overrides import merge
    return merge(yaml.safe_load((REPO / "params.yaml").read_text()),
                 yaml.safe_load((REPO / "profiles" / "paper.yaml").read_text()))


def check(value, goal: str, threshold: float, note: str = "") -> dict:
    """A target: pass or miss, and the margin (value - threshold for >=, threshold - value for <; positive
    means room to spare). pass is None where the value was not measured or the target does not apply."""
    if value is None:
        return {"goal": f"{goal} {threshold}", "pass": None, "margin": None, "note": note or "not measured"}
    margin = value - threshold if goal == ">=" else threshold - value
    passed = margin >= 0 if goal in (">=", "<=") else margin > 0
    return {"goal": f"{goal} {threshold}", "pass": bool(passed), "margin": round(margin, 4), "note": note}


def add_targets(results: dict) -> list:
    """Attach each target to its row (key "target..."), and return them all as one list."""
    targets = []

    def add(row, key, name, value, *rule, note=""):
        # one dict in both places, so a profile added to a missed target later (its "why") shows in both
        row[key] = {"name": name, "value": None if value is None else round(value, 4), **check(value, *rule, note=note)}
        targets.append(row[key])

    for row in results.get("training", []):
        add(row, "target", f"training tokens/s, fairseq / transformers, {row['size']}", row["ratio"], ">=", 1.0)
    if results.get("training"):
        largest = results["settings"]["largest_size"]
        [row] = [r for r in results["training"] if r["size"] == largest]
        speedup = row.get("bf16_speedup")
        if speedup is None:  # a GPU: only training.precision is timed
            note = f"not applicable: {results['settings']['training_device']} trains in one precision only"
        elif not {"avx512_bf16", "amx_bf16"} & set(results["hardware"].get("cpu_flags", [])):
            note = "not applicable: no bf16 instructions"  # bf16 is emulated: no speed-up to expect
        else:
            note = ""
        add(row, "target_bf16", f"training tokens/s, bf16 / fp32, {largest} (largest size)",
            None if note else speedup, ">=", 1.5, note=note)
    if "deployment" in results:
        largest = results["settings"]["largest_size"]
        rows = [r for r in results["deployment"]["glue"] if r["size"] == largest]
        for row in rows:
            batch, m = row["onnx_int8"]["batch_size"], f"{row['model']} (largest size)"
            add(row, "target_speedup", f"ONNX int8 / PyTorch fp32 throughput at batch {batch}, {m}",
                row["int8_speedup_batch"], ">=", 2.5)
            add(row, "target_over_onnx", f"ONNX int8 / ONNX fp32 throughput at batch {batch}, {m}",
                row["int8_over_onnx_fp32_batch"], ">=", 2.0)
            add(row, "target_batch1", f"ONNX int8 / PyTorch fp32 speed at batch 1, {m}",
                row["int8_speedup_batch1"], ">=", 2.0)
            add(row, "target_accuracy", f"accuracy drop int8 vs fp32 (points), {m}", row["accuracy_drop"], "<=", 1.0)
            add(row, "target_int4_bytes", f"ONNX int4 zipped bytes / ONNX fp32, {m}", row["int4_zip_ratio"],
                "<=", round(1 / 7, 4))
            add(row, "target_int4_accuracy", f"accuracy drop int4 vs fp32 (points), {m}", row["int4_accuracy_drop"],
                "<=", 1.0)
        if not rows:
            add({}, "target", f"ONNX int8 / PyTorch fp32 throughput, {largest} (largest size)", None, ">=", 2.5,
                note=f"no deployment models for {largest}")
        mt = results["deployment"]["mt"]
        for row in mt[-1:]:  # train_mt.sizes' last, the largest of the default grid
            batch, m = row["onnx_int8"]["batch_size"], f"{row['model']} (beam {row['onnx_int8']['beam']})"
            add(row, "target_speedup", f"translation ONNX int8 / fairseq fp32 sentences/s at batch {batch}, {m}",
                row["int8_speedup_batch"], ">=", 1.0)
            add(row, "target_batch1", f"translation ONNX int8 / fairseq fp32 speed at batch 1, {m}",
                row["int8_speedup_batch1"], ">=", 2.0)
            add(row, "target_accuracy", f"translation BLEU, |fairseq fp32 - ONNX int8|, {m}", abs(row["bleu_drop"]),
                "<=", 0.5)
    if "overhead" in results:
        dvc = results["overhead"]["dvc"]
        add(dvc, "target", "no-op dvc repro (s)", dvc["noop_repro_s"], "<=", 3.0, note=dvc.get("skipped", ""))
        for row in results["overhead"]["budget_utilisation"]:
            seconds = row["budget"].get("seconds")
            applies = seconds is not None and seconds >= 120
            add(row, "target", f"budget utilisation, {row['stage']} {row['model']} ({budget_text(row['budget'])})",
                row.get("utilisation") if applies else None, ">=", 0.9,
                note=row.get("skipped", "") if applies else "n/a: the target is for budgets of 2 minutes or more")
    return targets


def budget_text(budget: dict) -> str:
    return f"{budget['seconds']:g} s" if budget.get("seconds") is not None else f"{budget['updates']} updates"


def memory_rows(results: dict) -> list:
    """Every peak RSS measured, one row per child process."""
    rows = []
    if results.get("overhead", {}).get("startup", {}).get("import_peak_rss_mb"):
        rows.append({"what": "import lib.harness, fairseq, torch (baseline)",
                     "peak_rss_mb": results["overhead"]["startup"]["import_peak_rss_mb"]})
    for row in results.get("training", []):
        for loop in ("fairseq", *(f"fairseq_{p}" for p in row["precisions"][1:]), "transformers"):
            rows.append({"what": f"training {row['size']}, {loop.split('_')[0]} {row[loop]['precision']} "
                                 f"({row[loop]['tokens_per_update']:.0f} tokens/update)",
                         "peak_rss_mb": row[loop]["peak_rss_mb"]})
    for kind in ("glue", "mt"):
        for row in results.get("deployment", {}).get(kind, []):
            for fmt in FORMATS:
                rows.append({"what": f"deployment {row['model']}, {fmt} (load, {row[fmt]['split']} set and timing "
                                     f"at batch {row[fmt]['batch_size']})", "peak_rss_mb": row[fmt]["peak_rss_mb"]})
    return rows


def table(headers: list, rows: list) -> str:
    cell = lambda v: "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
    return "\n".join(["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
                     + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]) + "\n"


def verdict(target: dict) -> str:
    if target["pass"] is None:
        return f"- ({target['note']})"
    return f"{'pass' if target['pass'] else 'MISS'} ({target['margin']:+.3g})"


def markdown(results: dict) -> str:
    hw, st = results["hardware"], results["settings"]
    out = [f"# Benchmarks\n\n`{results['command']}` on {results['started']}, {results['duration_s']:.0f} s.\n",
           f"Hardware: {hw['cpu']} ({hw['cores']} cores), GPU: {hw['gpu'] or 'none'}; "
           + ", ".join(f"{k} {v}" for k, v in hw["versions"].items()) + ".\n",
           f"Settings: {', '.join(f'{k}={v}' for k, v in st.items())}.\n",
           "## Targets\n", table(["target", "value", "goal", "verdict (margin)"],
                                 [[t["name"], t["value"], t["goal"], verdict(t)] for t in results["targets"]])]
    missed = [t for t in results["targets"] if t.get("why")]
    if missed:
        out += ["\nWhere each miss goes, from its profile:\n", *[f"- {t['name']}: {t['why']}." for t in missed], ""]
    if results.get("training"):
        rows = results["training"]
        timed = rows[0]["precisions"]
        out += ["## Training throughput (masked LM)\n",
                # the CPU and its ISA flags on the figures' own line: they decide which kernels (and whether
                # bf16 matmuls) run
                f"{st['training_precision']} on {st['training_device']} ({hw['cpu']}; GPU: {hw['gpu'] or 'none'}), "
                f"{st['training_threads']} threads, {st['training_updates']} timed updates after "
                f"{st['training_warmup']} warm-up updates, median tokens/s; fairseq and transformers in "
                f"{timed[0]}.\n",
                table(["size", "non-emb. params", "fairseq tokens/s", "transformers tokens/s", "ratio",
                       "fairseq GFLOP/s", "MFU", "target"],
                      [[r["size"], r["non_embedding_parameters"], r["fairseq"]["tokens_per_s"],
                        r["transformers"]["tokens_per_s"], r["ratio"], r["fairseq"]["model_gflops_per_s"],
                        r["fairseq"]["mfu"], verdict(r["target"])] for r in rows])]
        if len(timed) > 1:
            out += ["\nfairseq tokens/s per precision (bf16: torch.autocast around the fp32 model, as the "
                    f"stages train on CPU), on {hw['cpu']}.\n",
                    table(["size", *(f"{p} tokens/s" for p in timed), "bf16 / fp32", "target"],
                          [[r["size"], *(r["tokens_per_s"][p] for p in timed), r["bf16_speedup"],
                            verdict(r["target_bf16"]) if "target_bf16" in r else ""] for r in rows])]
    for kind, metric in (("glue", "accuracy"), ("mt", "bleu")):
        rows = results.get("deployment", {}).get(kind, [])
        if not rows:
            continue
        out += [f"## Deployment: {'classifiers' if kind == 'glue' else 'translation (generation)'}\n",
                f"On {hw['cpu']}: latency at batch 1 (ms), throughput at batch {rows[0]['onnx_int8']['batch_size']} "
                f"({rows[0]['onnx_int8']['throughput_unit']}), {st['eval_threads']} threads; {metric} on "
                f"{rows[0]['onnx_int8']['examples']} {rows[0]['onnx_int8']['split']} examples. Quantization: the "
                "scheme compress chose for the CPU it ran on, and the quantized model's agreement with fp32 on "
                "the check set.\n",
                table(["model", "format", "latency ms", "throughput", metric, "zipped MB", "quantization",
                       "agreement", "peak RSS MB"],
                      [[r["model"], f, r[f]["latency_ms"], r[f]["throughput"], r[f][metric],
                        r[f]["bytes_zip"] / 1e6 if r[f].get("bytes_zip") else None, r[f].get("quantization"),
                        r[f].get("agreement"), r[f]["peak_rss_mb"]] for r in rows for f in FORMATS]),
                "\n", table(["model", "int8 / PyTorch fp32 throughput", "int8 / ONNX fp32 throughput",
                             "int8 / PyTorch fp32 batch-1 speed", f"{metric} drop int8", f"{metric} drop int4",
                             "int4 zipped / ONNX fp32"],
                            [[r["model"], r["int8_speedup_batch"], r["int8_over_onnx_fp32_batch"],
                              r["int8_speedup_batch1"], r[f"{metric}_drop"], r[f"int4_{metric}_drop"],
                              r["int4_zip_ratio"]] for r in rows])]
    if "overhead" in results:
        o = results["overhead"]
        out += ["## Pipeline overhead\n",
                f"- `dvc status`: {o['dvc']['status_s']} s; no-op `dvc repro`: " + (
                    f"{o['dvc']['noop_repro_s']} s ({verdict(o['dvc']['target'])})\n"
                    if o["dvc"]["noop_repro_s"] is not None else f"skipped: {o['dvc']['skipped']}\n"),
                "- start-up: " + ", ".join(
                    ([f"`import lib.harness, fairseq, torch` {o['startup']['import_stages_fairseq_torch_s']} s"]
                     if o["startup"]["import_stages_fairseq_torch_s"] is not None else [])
                    + [f"`python -m stages.{m} --bad-args` {s} s" for m, s in o["startup"]["stage_bad_args_s"].items()])
                + "\n\nBudget utilisation: " + o["method"] + "\n",
                table(["stage", "model", "budget", "wall s", "in updates s", "utilisation", "start-up s",
                       "between updates s", "validation s", "checkpoints s", "after training s", "fairseq clock s",
                       "target"],
                      [[r["stage"], r["model"], budget_text(r["budget"]), r.get("wall_s"), r.get("train_steps_s"),
                        r.get("utilisation"),
                        r.get("startup_s"), r.get("between_updates_s"), r.get("validation_s"), r.get("checkpoint_s"),
                        r.get("after_training_s"),
                        r.get("budget_clock_s"), verdict(r["target"]) if not r.get("skipped") else r["skipped"]]
                       for r in o["budget_utilisation"]])]
    if results["memory"]:
        out += ["## Peak memory\n", "Peak resident set (VmHWM) of each child process, one process per measurement.\n",
                table(["process", "peak RSS MB"], [[m["what"], m["peak_rss_mb"]] for m in results["memory"]])]
    out += ["## Notes\n", *[f"- {n}\n" for n in results["notes"]]]
    return "\n".join(out)
