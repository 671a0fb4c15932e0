"""Every GLUE task of the catalog that the offline mirror holds, and a dataset of one's own added as the
README says, through the whole pipeline by params alone: the tiny project's `dvc repro` with all of them
selected (real GLUE rows, capped; tiny models and update budgets), each scored by its own metrics, ONNX
fp32 and int8 deployment models included."""
import csv
import importlib
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SHARED_MIRROR, sha256
from test_full_pipeline_dvc import tiny_pipeline
from test_pipeline_dvc import build_dvc_project

# each task's metrics in the order evaluate writes them (the catalog's, then accuracy for a classifier)
MIRRORED = {"sst2": ["accuracy"], "rte": ["accuracy"], "wnli": ["accuracy"], "mrpc": ["f1", "accuracy"],
            "cola": ["mcc", "accuracy"], "stsb": ["pearson", "spearman"]}
OWN = {"reviews": ["f1", "accuracy"]}   # the README's own dataset
FORMATS = {"fairseq fp32", "simulated k-bit", "ONNX fp32", "ONNX int8", "ONNX int4"}


def readme_dataset(directory: Path) -> dict:
    """Steps 1 and 2 of the README's "Adding a dataset of your own": its files in `directory` (in place of
    /home/me/reviews), their checksums, and its catalog entry, taken from the README itself."""
    directory.mkdir()
    for split, n in (("train", 40), ("dev", 16)):
        rows = [f"a {'fine' if i % 2 else 'dull'} film, take {i}\t{'good' if i % 2 else 'bad'}" for i in range(n)]
        (directory / f"{split}.tsv").write_text("text\trating\n" + "\n".join(rows) + "\n")
    section = (REPO / "docs" / "your-own-data.md").read_text().split("### Adding a dataset of your own", 1)[1]
    entry = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    entry = entry.replace("/home/me/reviews", str(directory))
    for name in ("train.tsv", "dev.tsv"):
        entry = entry.replace(f"<sha256 of {name}>", sha256(directory / name))
    return yaml.safe_load(entry)


@pytest.fixture(scope="module")
def every_task(tmp_path_factory):
    if not SHARED_MIRROR.is_dir():
        pytest.skip(f"no real mirror at {SHARED_MIRROR}")
    root = tmp_path_factory.mktemp("glue_tasks")
    real = yaml.safe_load((REPO / "datasets.yaml").read_text())["datasets"]

    def edit(p):
        tiny_pipeline(p)
        for task in MIRRORED:  # the real GLUE files in place of the tiny mirror's, with their real entries
            shutil.rmtree(root / "mirror" / task, ignore_errors=True)
            (root / "mirror" / task).symlink_to(SHARED_MIRROR / task)
            p["datasets"][task] = real[task]
        p["datasets"] |= readme_dataset(root / "reviews")
        p["data"]["glue_tasks"] = [*MIRRORED, *OWN]
        p["prepare_glue"].update(max_train_examples=32, max_dev_examples=16)
        p["finetune"]["recipe"].update(budget={"seconds": None, "updates": 4}, validate_every=4, valid_batches=1)
        p["compress"].update(sparsities=[0.0], bits=[8], onnx_sparsities=[0.0])
    build_dvc_project(root, edit, stages=None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DATA_MIRROR", str(root / "mirror"))
        mp.chdir(root / "project")
        ran = repro_in_process()
    assert {f"{stage}@T1-{task}" for stage in ("finetune", "compress_glue", "evaluate_glue")
            for task in [*MIRRORED, *OWN]} | {"tabulate", "report"} <= ran
    assert not (root / "project/data/downloads/reviews").exists()  # its file:// URLs read where they are
    assert (root / "project/data/raw/reviews/train.tsv").is_file()
    return root / "project"


def repro_in_process() -> set:
    """What `dvc repro` does in a fresh project, in this process: every stage's command, in DVC's order
    (the post-order of its stage graph), without starting python, torch and fairseq again for each of
    some 40 stages (most of a tiny stage's time). Returns the stages run."""
    import networkx
    from dvc.repo import Repo
    with Repo() as repo:
        stages = [(s.addressing, s.cmd) for s in networkx.dfs_postorder_nodes(repo.index.graph)]
    for name, cmd in stages:
        command = re.fullmatch(r"python -m (stages\.\w+)(.*)", cmd)
        assert command, f"{name}: '{cmd}' is not a stage module run by python"
        importlib.import_module(command[1]).main(command[2].split())
    return {name for name, _ in stages}


@pytest.mark.parametrize("task, metrics", [*MIRRORED.items(), *OWN.items()])
def test_every_task_is_scored_by_its_own_metrics_in_every_format(every_task, task, metrics):
    with open(every_task / "reports/eval" / f"T1-{task}.csv") as f:
        rows = list(csv.DictReader(f))
    scored = {}  # format: its metrics, in order (one variant of each format, one dev split)
    for r in rows:
        scored.setdefault(r["format"], []).append(r["metric"])
    regression = metrics[0] == "pearson"
    assert scored == {f: metrics + ([] if regression else ["loss"]) for f in FORMATS}
    assert all(r["value"] != "" and int(r["examples"]) == 16 for r in rows)
    headline = json.loads((every_task / "reports/metrics.json").read_text())[task]["T1"]
    assert {f"{metrics[0]}_{k}" for k in ("fp32", "onnx_fp32", "onnx_int8")} <= headline.keys()
    meta = json.loads((every_task / "data/bin/glue" / task / "meta.json").read_text())
    assert meta["examples"] == {"train": 32, "dev": 16} and set(meta["unk_rate"]) == {"train", "dev"}
    assert f"**{task}**" in (every_task / "reports/report.md").read_text()  # the recommendation names it
    # every variant's predictions, one row per dev example, in the catalog's label names where it gives them
    entry = yaml.safe_load((every_task / "datasets.yaml").read_text())["datasets"][task]
    for variant in {r["variant"] for r in rows}:
        with open(every_task / "reports/predictions" / f"T1-{task}" / f"{variant}.tsv", newline="") as f:
            predicted = list(csv.DictReader(f, delimiter="\t"))
        assert len(predicted) == 16, variant
        if not regression:
            assert {r["predicted"] for r in predicted} <= set(entry.get("label_names") or entry["labels"]), variant
