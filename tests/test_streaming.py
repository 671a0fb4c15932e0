"""The prepare stages stream: memory flat in the corpus size, the same seeded sample and caps whatever the
chunk size, and the data rehearsal (bench/rehearsal.py) runs the paper profile's data stages end to end."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import synthetic
from bench.rehearsal import measure
from conftest import REPO, set_params
from lib import binarize, text
from stages import fetch, prepare_mlm, prepare_mt


def write_corpus(project: Path, lines: int, seed=0) -> None:
    """data/raw/wikitext2/{train,valid,test}.txt of synthetic text (`lines` train lines of ~60 words)."""
    lang = synthetic.Language(seed, 20_000, "aeiou")
    rng = np.random.default_rng(seed)
    raw = project / "data" / "raw" / "wikitext2"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", lines), ("valid", 500), ("test", 500)):
        with open(raw / f"{split}.txt", "wb") as f:
            for chunk in lang.lines(rng, n, 60):
                f.write(chunk)


def outputs(directory: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_kept_indices_and_capped():
    keep = text.kept_indices(1000, 10)
    assert len(keep) == 10 == len(set(keep.tolist())) and list(keep) == sorted(keep)
    assert list(text.capped(iter(range(1000)), keep)) == keep.tolist()
    assert np.array_equal(keep, text.kept_indices(1000, 10))  # seeded
    assert text.kept_indices(10, 10) is None and text.kept_indices(10, None) is None
    assert list(text.capped(iter("abc"), None)) == ["a", "b", "c"]


def test_prepare_mlm_memory_does_not_grow_with_the_corpus(tiny_project):
    """Peak RSS of prepare_mlm (the stage and fairseq-preprocess's workers, in a child process) on a corpus
    and on one 8 times larger: within 20%. Both exceed sentencepiece's sample, which is what it holds."""
    set_params(tiny_project, lambda p: p["prepare_mlm"].update(sentencepiece_sample=5_000))
    peaks = {}
    for factor in (1, 8):
        write_corpus(tiny_project, 20_000 * factor)
        result = measure([sys.executable, "-m", "stages.prepare_mlm"], tiny_project,
                         {**__import__("os").environ, "PYTHONPATH": str(tiny_project)},
                         tiny_project / f"prepare-{factor}.log", interval=0.05)
        assert result["rc"] == 0, Path(result["log"]).read_text()[-2000:]
        caps = json.loads((tiny_project / "data/bin/mlm/caps.json").read_text())
        assert caps["lines"]["train"] == 20_000 * factor
        peaks[factor] = result
    for key in ("peak_rss_mb", "peak_process_rss_mb"):
        assert peaks[8][key] <= 1.2 * peaks[1][key], (key, peaks[1][key], peaks[8][key])


def test_sample_and_caps_are_the_same_on_every_run_and_chunk_size(tiny_project, monkeypatch):
    """A capped corpus larger than sentencepiece's sample: two runs, the second with another encoding
    chunk, give byte-identical outputs (sentencepiece model, binarized data, caps)."""
    write_corpus(tiny_project, 3_000)
    set_params(tiny_project, lambda p: p["prepare_mlm"].update(sentencepiece_sample=500, max_train_lines=1_200))
    runs = []
    for chunk in (20_000, 77):
        monkeypatch.setattr(binarize, "ENCODE_CHUNK", chunk)
        prepare_mlm.main([])
        runs.append(outputs(Path("data/bin/mlm")))
    assert runs[0] == runs[1]
    caps = json.loads(runs[0]["caps.json"])
    assert caps["lines"]["train"] == 1_200 and caps["train_lines_available"] == 3_000


def test_binarized_as_fairseq_preprocess_would(tiny_project, tmp_path):
    """lib/binarize.py writes what fairseq-preprocess writes from the same pieces, byte for byte: every
    .bin, .idx and dictionary of a prepared translation pair."""
    import sentencepiece as spm
    from lib.fairseq_cli import fairseq_preprocess
    from lib.params import load_params
    fetch.main(["multi30k"])
    prepare_mt.main([])
    tr, out = load_params().data.translation, Path("data/bin/mt")
    sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    raw = Path("data/raw") / tr.dataset
    for split in ("train", "valid", "test"):
        for lang in (tr.source, tr.target):
            lines = (raw / f"{split}.{lang}").read_text().splitlines()
            (tmp_path / f"{split}.{lang}").write_text("".join(" ".join(p) + "\n" for p in sp.encode(lines, out_type=str)))
    fairseq_preprocess(tmp_path / "ref", ["--source-lang", tr.source, "--target-lang", tr.target, "--joined-dictionary",
                                          "--srcdict", out / f"dict.{tr.source}.txt", "--trainpref", tmp_path / "train",
                                          "--validpref", tmp_path / "valid", "--testpref", tmp_path / "test"])
    reference = outputs(tmp_path / "ref")
    assert len(reference) == 2 + 3 * 2 * 2  # two dictionaries, .bin and .idx of 3 splits x 2 sides
    assert {name: data for name, data in outputs(out).items() if name in reference} == reference


def test_prepare_mt_names_the_short_file(tiny_project):
    fetch.main(["multi30k"])
    valid = Path("data/raw/multi30k/valid.fr")
    valid.write_text("".join(valid.read_text().splitlines(keepends=True)[:-3]))
    from lib.errors import DataError
    with pytest.raises(DataError, match=r"valid.fr:\d+: ends at line \d+, before valid.en"):
        prepare_mt.main([])
    assert not Path("data/bin/mt").exists()


def test_rehearsal_runs_every_paper_data_stage(tmp_path):
    """`python -m bench.rehearsal data` at a tiny scale: the synthetic WikiText-103, MNLI and WMT'14 archives
    through the paper profile's fetch and prepare stages, each measured; then, on the data it kept,
    `python -m bench.rehearsal models` at tiny sizes (test_model_rehearsal)."""
    out = tmp_path / "reports" / "rehearsal-data.json"
    result = subprocess.run([sys.executable, "-m", "bench.rehearsal", "data", "--scale", "0.0005",
                             "--root", str(tmp_path / "root"), "--out", str(out), "--keep"],
                            cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    stages = {(e["dataset"], s["stage"]): s for e in report["entries"] for s in e["stages"]}
    assert set(stages) == {("wikitext103", "fetch wikitext103"), ("wikitext103", "prepare_mlm"),
                           ("mnli", "fetch mnli"), ("mnli", "prepare_glue mnli"),
                           ("wmt14_en_fr", "fetch wmt14_en_fr"), ("wmt14_en_fr", "prepare_mt")}
    for s in stages.values():
        assert s["rc"] == 0 and s["wall_s"] > 0 and s["peak_rss_mb"] > 0 and s["output_bytes"] > 0 and s["steps"]
    assert set(stages["wmt14_en_fr", "prepare_mt"]["steps"]) == {"start-up and checks", "sentencepiece",
                                                                 "encoding and binarization"}
    assert stages["wmt14_en_fr", "prepare_mt"]["sentences"] == 2 * (round(40_842_333 * 0.0005) + 3_000 + 3_003)
    assert {t["name"].split(":")[0] for t in report["targets"]} == {"wikitext103 x0.0005", "mnli x0.0005",
                                                                     "wmt14_en_fr x0.0005"}
    assert "# Rehearsal of the paper profile's data stages" in out.with_suffix(".md").read_text()
    assert (tmp_path / "root/work/data/bin/mt/train.en-fr.en.bin").exists()  # kept: --keep
    model_rehearsal(tmp_path)
    assert not (tmp_path / "root").exists()  # the corpora are removed unless --keep


def model_rehearsal(tmp_path):
    """`python -m bench.rehearsal models` with tiny sizes on the data rehearsal's kept data: pretrain, finetune,
    train_mt, compress and evaluate, each measured, with the evaluation projected to the paper's caps."""
    out = tmp_path / "reports" / "rehearsal-models.json"
    tiny = "{layers: 1, hidden: 32, ffn: 64, heads: 2}"
    result = subprocess.run([sys.executable, "-m", "bench.rehearsal", "models", "--mlm", "T1", "--mt", "T1",
                             "--finetune", "T1:sst2", "--updates", "1", "--examples", "8", "--sentences", "2",
                             "--data-scale", "0.0005", "--root", str(tmp_path / "root"), "--out", str(out),
                             "--set", f"models.mlm.T1={tiny}", f"models.mt.T1={tiny}", "compress.sparsities=[0.0, 0.9]",
                             "compress.bits=[4]", "compress.onnx_sparsities=[]"],  # ONNX: tests/test_onnx_*
                            cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    runs = {(e["stage"], e["model"]): e for e in report["entries"]}
    assert set(runs) == {("pretrain", "T1"), ("finetune", "T1-sst2"), ("compress", "T1-sst2"), ("evaluate", "T1-sst2"),
                         ("train_mt", "mt-T1"), ("compress", "mt-T1"), ("evaluate", "mt-T1")}
    for e in runs.values():
        assert e["rc"] == 0 and e["wall_s"] > 0 and e["peak_rss_mb"] > 0 and e["output_bytes"] > 0
    # 2 sparsities x fp32 and 4 bits: each variant's bytes and time
    compressed = runs["compress", "T1-sst2"]
    assert len(compressed["variants"]) == 4 and set(compressed["load_seconds"]) == {"s0.90-fp32", "s0.90-q4"}
    assert set(compressed["steps"]) == {"first sparsity", "other sparsities", "bytes_zip"}  # its phases
    assert compressed["steps"]["first sparsity"] > 0 and sum(compressed["steps"].values()) <= compressed["wall_s"] + 0.2
    assert set(runs["evaluate", "mt-T1"]["variant_seconds"]) == {v["variant"] for v in runs["compress", "mt-T1"]["variants"]}
    # evaluate logs each variant's timing apart from its scoring: only the deployment format is timed here
    evaluated = runs["evaluate", "T1-sst2"]
    assert {v for v, s in evaluated["timing_seconds"].items() if s > 0} == {"s0.00-fp32"}
    from bench.rehearsal_models import evaluation_projection
    from bench.report import paper_params
    projected = evaluation_projection(evaluated, paper_params())  # 4 variants ran, the paper's grid has 43
    assert projected["variants_measured"] == "4 of 43" and projected["fairseq_variants"] == 40
    assert projected["cpu_s"] > 0 and projected["gpu_node_s"] > 0
    assert "[rehearsal] wikitext103" not in result.stdout  # the data rehearsal's kept data, not made again
    names = [t["name"] for t in report["targets"]]
    assert sum(n.startswith(f"compress {m}: worst pruned variant's disk / bytes_zip") for n in names
               for m in ("T1-sst2", "mt-T1")) == 2
    assert sum(n.endswith("peak RSS (MB)") for n in names) == 7
    text = out.with_suffix(".md").read_text()
    assert "# Rehearsal of the paper profile's model stages" in text and "| T1-sst2 | 8 | 2000 |" in text
    assert "## The paper profile as configured, projected" in text and "**Disk, the paper profile in all:" in text


def compress_entry(model: str, size: str, grid: list, wall: float, steps=None, scale: float = 1.0) -> dict:
    """A compress entry of the model rehearsal: fairseq variants at `grid` (sparsity, bits), their bytes falling
    with the sparsity and the bits, and the three ONNX models."""
    variants = [{"variant": f"s{s:.2f}-{b}", "format": "fairseq fp32" if b == 32 else "simulated k-bit",
                 "sparsity": s, "bits": b, "disk_bytes": scale * (1 - s) * b * 1000, "bytes_zip": 1} for s, b in grid]
    variants += [{"variant": f"onnx-s0.00-{f}", "format": f"ONNX {f}", "sparsity": 0.0, "bits": b,
                  "disk_bytes": scale * b * 1000, "bytes_zip": 1} for f, b in (("fp32", 32), ("int8", 8), ("int4", 4))]
    return {"stage": "compress", "model": model, "size": size, "kind": "mlm", "wall_s": wall, "steps": steps,
            "variants": variants, "output_bytes": sum(v["disk_bytes"] for v in variants), "peak_rss_mb": 1}


def test_compress_of_the_full_grid_is_projected_from_a_run_of_part_of_it():
    """bench.rehearsal_models.full_grid_compress: bytes in the proportion a full-grid run shows at the same grid
    points, seconds from the run's phases (the first sparsity as run, each further fairseq variant at the rate of
    the later sparsities' variants, the bytes_zip wait in proportion to the variants)."""
    from bench.rehearsal_models import full_grid_compress
    p = {"compress": {"sparsities": [0.0, 0.5, 0.9], "bits": [4, 8], "onnx_sparsities": [0.0]}}
    full = compress_entry("A-mnli", "A", [(s, b) for s in (0.0, 0.5, 0.9) for b in (32, 4, 8)], 100.0)
    part = compress_entry("B-mnli", "B", [(s, b) for s in (0.0, 0.9) for b in (32, 4)], 21.0,
                          steps={"first sparsity": 10.0, "other sparsities": 4.0, "bytes_zip": 7.0}, scale=2.0)
    assert full_grid_compress(full, [full, part], p) == {"seconds": 100.0, "bytes": full["output_bytes"],
                                                          "how": "measured"}
    projected = full_grid_compress(part, [full, part], p)
    # 2 fairseq variants at the first sparsity, 2 more in 4 s: 2 s each for the 7 others; 7 s of zips for 7 variants
    assert projected["seconds"] == 10.0 + 2.0 * (9 - 2) + 7.0 * (9 + 3) / 7
    fairseq = lambda e: sum(v["disk_bytes"] for v in e["variants"] if "ONNX" not in v["format"])  # noqa: E731
    corner = sum(v["disk_bytes"] for v in full["variants"] if "ONNX" not in v["format"]
                 and (v["sparsity"], v["bits"]) in {(0.0, 32), (0.0, 4), (0.9, 32), (0.9, 4)})
    onnx = part["output_bytes"] - fairseq(part)
    assert projected["bytes"] == pytest.approx(onnx + fairseq(part) * fairseq(full) / corner)
    assert projected["bytes"] == pytest.approx(2 * full["output_bytes"])  # B is A at twice the bytes
    # without a full-grid run (or the phases) nothing is made up
    assert full_grid_compress(part, [part], p)["bytes"] is None
    assert full_grid_compress({**part, "steps": None}, [full, part], p)["seconds"] is None


def test_the_paper_profile_is_projected_run_by_run():
    """Every run of the paper profile: training at its budget; compress and evaluate as rehearsed, or scaled
    from the nearest rehearsed model of their kind by model bytes; random-init controls dense only; a size never
    trained here is not made up."""
    from bench.rehearsal_models import grid_counts, profile_projection, profile_runs, run_projection
    from bench.report import paper_params
    p = paper_params()
    runs = profile_runs(p)
    tasks, sizes = p["data"]["glue_tasks"], p["pretrain"]["sizes"]
    glue_models = len(sizes) * len(tasks) + len(p["finetune"]["random_init_sizes"]) * len(tasks)
    assert len(runs) == len(sizes) + 3 * glue_models + 3 * len(p["train_mt"]["sizes"])
    fairseq_grid, onnx_grid = grid_counts(p)
    full = [(s, b) for s in p["compress"]["sparsities"] for b in [32, *p["compress"]["bits"]]]
    entries = [{"stage": "pretrain", "model": s, "size": s, "kind": "mlm", "output_bytes": b, "peak_rss_mb": 1}
               for s, b in (("L6-H768", 1000), ("L12-H768", 2000), ("L24-H768", 4000))]
    entries.append({**compress_entry("L12-H768-mnli", "L12-H768", full, 600.0), "output_bytes": 9000})
    project = lambda model, stage: run_projection(  # noqa: E731
        next(r for r in runs if r["model"] == model and r["stage"] == stage), entries, p)
    assert project("L24-H768", "pretrain") == {"gpu_node_s": 86400, "here_s": 86400, "bytes": 4000,
                                               "how": "its budget"}
    assert project("L12-H768-mnli", "compress")["here_s"] == 600.0
    scaled = project("L24-H768-sst2", "compress")  # another task, twice the bytes
    assert (scaled["here_s"], scaled["bytes"]) == (1200.0, 18000) and "L12-H768-mnli" in scaled["how"]
    control = project("L6-H768-mnli-random", "compress")
    assert control["here_s"] == pytest.approx(300.0 / (fairseq_grid + onnx_grid))
    assert project("L6-H256", "pretrain")["bytes"] is None  # never trained here
    x = profile_projection(entries, p, data_bytes=5e9)
    assert x["stages"]["compress"]["rehearsed"] == 1 and x["stages"]["pretrain"]["rehearsed"] == 3
    assert x["stages"]["evaluate"]["unknown"] == glue_models + len(p["train_mt"]["sizes"])  # none rehearsed
    assert x["total_bytes"] == x["outputs_bytes"] + 5e9
