"""Shared fixtures: a tiny data mirror made here, and a project directory whose params.yaml is the real
one with the catalog pointed at that mirror (so tests follow the real schema and dvc.yaml)."""
import gzip
import os
import hashlib
import io
import random
import shutil
import signal
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# the offline mirror of the real datasets: DATA_MIRROR as the user's environment sets it (read before any
# fixture points it at a tiny mirror), else CI's ../shared/data beside the clone
SHARED_MIRROR = Path(os.environ.get("DATA_MIRROR") or REPO.parent / "shared" / "data")
UNREACHABLE = "http://127.0.0.1:9"                # discard port: nothing answers, so only the mirror works

WORDS = ("the a cat dog bird sat ran flew on under over mat house tree river red green big small "
         "old young sings sleeps quickly slowly near far").split()
# plus made-up words, so the tiny corpus supports a few hundred sentencepiece pieces
_syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
WORDS += sorted({"".join(random.Random(i).sample(_syllables, 2 + i % 2)) for i in range(300)})


def sentence(rng, lo=4, hi=12):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def gz(path: Path, lines):
    path.write_bytes(gzip.compress("".join(x + "\n" for x in lines).encode(), mtime=0))


def fastai_csv_article(title, paragraphs):
    """An article as the fastai re-export of WikiText-2 stores it (see ../shared/data/SOURCES.md)."""
    body = [f" = {title} = ", " "] + [f" {p} " for p in paragraphs]
    return ['" '] + [line.replace('"', '""') for line in body] + ['"']


def build_mirror(root: Path) -> dict:
    """Write a tiny mirror in the layout of ../shared/data; return the matching `datasets` catalog."""
    rng = random.Random(0)
    files = {}

    def entry(dataset, name):
        path = root / dataset / name
        return {"url": f"{UNREACHABLE}/{dataset}/{name}", "sha256": sha256(path)}

    # masked-LM corpus: train inside a fastai-style zip, valid/test as plain text
    (root / "wikitext2").mkdir(parents=True)
    lines = []
    for a in range(40):
        paras = [sentence(rng, 20, 40) + (' with "quoted" words' if a % 7 == 0 else "") for _ in range(6)]
        lines += fastai_csv_article(f"Article {a}", paras)
    with zipfile.ZipFile(root / "wikitext2" / "wikitext-2-v1.zip", "w") as z:
        z.writestr("wikitext-2/wiki.train.tokens", "\n".join(lines) + "\n")
    for split in ("valid", "test"):
        (root / "wikitext2" / f"{split}.txt").write_text(
            "".join(f" = Title = \n \n {sentence(rng, 20, 40)} \n" for _ in range(10)))
    files["wikitext2"] = {"kind": "corpus",
                          "files": {n: entry("wikitext2", n) for n in ("wikitext-2-v1.zip", "valid.txt", "test.txt")},
                          "splits": {"train": [{"file": "wikitext-2-v1.zip", "member": "wikitext-2/wiki.train.tokens",
                                                "cleanup": "fastai_csv"}],
                                     "valid": [{"file": "valid.txt"}], "test": [{"file": "test.txt"}]}}

    # GLUE: a single-sentence task whose label is trivially learnable, and a pair task
    (root / "sst2").mkdir()
    for split, n in (("train", 120), ("dev", 30)):
        rows = []
        for i in range(n):
            label = i % 2
            rows.append(f"{'great' if label else 'awful'} {sentence(rng)} \t{label}")
        (root / "sst2" / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    (root / "rte").mkdir()
    for split, n in (("train", 80), ("dev", 20)):
        rows = [f"{i}\t{sentence(rng)}\t{sentence(rng)}\t{'entailment' if i % 2 else 'not_entailment'}"
                for i in range(n)]
        (root / "rte" / f"{split}.tsv").write_text("index\tsentence1\tsentence2\tlabel\n" + "\n".join(rows) + "\n")
    for task, columns, labels in (
            ("sst2", {"sentence1": "sentence", "label": "label"}, ["0", "1"]),
            ("rte", {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"},
             ["entailment", "not_entailment"])):
        files[task] = {"kind": "glue", "files": {n: entry(task, n) for n in ("train.tsv", "dev.tsv")},
                       "splits": {"train": [{"file": "train.tsv"}], "dev": [{"file": "dev.tsv"}]},
                       "header": True, "columns": columns, "labels": labels, "metrics": ["accuracy"]}

    # translation: "de"/"fr" are deterministic word-by-word rewrites of "en", so a model can learn them
    (root / "multi30k").mkdir()
    names = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
    for split, n in (("train", 300), ("valid", 30), ("test", 30)):
        en = [sentence(rng, 3, 9) for _ in range(n)]
        gz(root / "multi30k" / f"{names[split]}.en.gz", en)
        gz(root / "multi30k" / f"{names[split]}.fr.gz", [" ".join(w[::-1] for w in s.split()) for s in en])
        gz(root / "multi30k" / f"{names[split]}.de.gz", [s.upper() for s in en])
    files["multi30k"] = {"kind": "parallel", "languages": ["en", "de", "fr"],
                         "files": {f"{names[s]}.{lang}.gz": entry("multi30k", f"{names[s]}.{lang}.gz")
                                   for s in names for lang in ("en", "de", "fr")},
                         "splits": {s: [{"file": f"{names[s]}.{{lang}}.gz"}] for s in names}}
    return files


def read_params(project: Path) -> dict:
    """params.yaml and datasets.yaml of `project` as one dict (the catalog under `datasets`)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    return {**params, **yaml.safe_load((project / "datasets.yaml").read_text())}


def write_params(project: Path, params: dict) -> None:
    """The inverse of read_params: the catalog to datasets.yaml, the rest to params.yaml."""
    params = dict(params)
    (project / "datasets.yaml").write_text(yaml.safe_dump({"datasets": params.pop("datasets")}, sort_keys=False))
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def tiny_params(catalog: dict) -> dict:
    params = read_params(REPO)
    params["datasets"] = catalog
    params["data"]["glue_tasks"] = ["sst2", "rte"]  # a single sentence and a pair task
    params["prepare_mlm"]["vocab_size"] = 200
    params["prepare_mt"]["vocab_size"] = 200
    return params


def make_tiny_project(root: Path) -> Path:
    """root/mirror: a tiny mirror; root/project: stages/, lib/, dvc.yaml, params.yaml and a datasets.yaml
    pointing at the mirror."""
    catalog = build_mirror(root / "mirror")
    project = root / "project"
    project.mkdir()
    for package in ("stages", "lib"):
        shutil.copytree(REPO / package, project / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", "Makefile"):
        shutil.copy(REPO / name, project / name)
    write_params(project, tiny_params(catalog))
    return project


@pytest.fixture
def tiny_project(tmp_path, monkeypatch):
    """A tiny project; the test runs inside it with DATA_MIRROR at its mirror."""
    project = make_tiny_project(tmp_path)
    monkeypatch.chdir(project)
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "mirror"))
    return project


def set_params(project: Path, edit) -> None:
    """Apply `edit(params_dict)` to the project's params.yaml and datasets.yaml (read_params' dict)."""
    params = read_params(project)
    edit(params)
    write_params(project, params)


def venv_bin() -> Path:
    return Path(sys.executable).parent


TINY = {"T1": {"layers": 1, "hidden": 32, "ffn": 64, "heads": 2},
        "T2": {"layers": 2, "hidden": 48, "ffn": 96, "heads": 2}}


def tiny_training(p, pretrain_updates=12, finetune_updates=60, mt_updates=12):
    p["models"] = {"mlm": TINY, "mt": TINY}
    p["training"].update(device="cpu", threads=1)
    p["pretrain"]["sizes"] = p["train_mt"]["sizes"] = ["T1", "T2"]
    p["plan"].update(mlm_sizes=["T1", "T2"], mt_sizes=["T1", "T2"])
    p["finetune"]["random_init_sizes"] = []
    p["pretrain"]["recipe"].update(budget={"seconds": None, "updates": pretrain_updates}, tokens_per_sample=32,
                                   max_tokens=256, warmup_updates=2, lr=0.002, validate_every=4, valid_batches=2)
    p["finetune"]["recipe"].update(budget={"seconds": None, "updates": finetune_updates}, batch_size=8, lr=0.004,
                                   warmup_updates=2, dropout=0.0, weight_decay=0.0, validate_every=15,
                                   valid_batches=4)
    p["train_mt"]["recipe"].update(budget={"seconds": None, "updates": mt_updates}, max_tokens=256,
                                   warmup_updates=2, lr=0.002, validate_every=4, valid_batches=2)


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory):
    """A tiny project with every training stage run once, shared by the tests downstream of training
    (compression, conversion, evaluation): models/finetune/T1-sst2 (learns the separable task),
    models/finetune/T2-sst2, models/mt/T1 and models/mt/T2 (trained to copy the word-reversal task).
    Tests must treat it as read-only except for their own outputs; use `in_trained_project` to run there."""
    from stages import fetch, finetune, prepare_glue, prepare_mlm, prepare_mt, pretrain, train_mt
    root = tmp_path_factory.mktemp("trained")
    project = make_tiny_project(root)

    def edit(p):
        tiny_training(p, finetune_updates=60, mt_updates=150)
        p["train_mt"]["recipe"].update(validate_every=50, lr=0.005)
    set_params(project, edit)
    cwd, mirror = os.getcwd(), os.environ.get("DATA_MIRROR")
    os.chdir(project)
    os.environ["DATA_MIRROR"] = str(root / "mirror")
    try:
        for name in ("wikitext2", "sst2", "rte", "multi30k"):
            fetch.main([name])
        prepare_mlm.main([])
        prepare_glue.main(["sst2"])
        prepare_glue.main(["rte"])
        prepare_mt.main([])
        for size in ("T1", "T2"):
            pretrain.main([size])
            finetune.main([size, "sst2"])
            train_mt.main([size])
    finally:
        os.chdir(cwd)
        if mirror is None:
            os.environ.pop("DATA_MIRROR", None)
        else:
            os.environ["DATA_MIRROR"] = mirror
    return project


@pytest.fixture
def in_trained_project(trained_project, monkeypatch):
    monkeypatch.chdir(trained_project)
    return trained_project


def pruned(state: dict) -> dict:
    """A fairseq state dict with half of every layer matrix pruned (per matrix), as compression does."""
    from stages.compress import LAYER_MATRIX, prune
    return {**state, **prune({k: v for k, v in state.items() if LAYER_MATRIX.search(k)}, 0.5, "layer")}


def kill_once_exists(process, path: Path, timeout: float) -> None:
    """kill -9 `process` as soon as `path` exists, and wait for it: what a kill at that moment leaves."""
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None and time.time() < deadline, process.stderr.read()
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
