"""A checkpoint whose pickle would run code is refused on every path that loads one, with and without
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (torch lets that variable turn the weights-only loader off for every
load that does not ask for it explicitly, as fairseq's own loads do not): the error names the file and
says why, and the payload never runs."""
import contextlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_project, set_params, tiny_training
from lib import harness
from stages import compress, fetch, finetune, prepare_glue, prepare_mlm, pretrain
from lib.checkpoints import load_checkpoint
from lib.errors import StageError
from lib.harness import WORK_DIR
from lib.variant_weights import load_variant
from lib.variants import WEIGHTS_FILE

UNSAFE_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


class Payload:
    """Unpickled, it runs `touch marker`: the stand-in for what a malicious checkpoint would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A tiny project with sst2 prepared and T1 pretrained and fine-tuned on it (seconds each)."""
    root = tmp_path_factory.mktemp("safety")
    project = make_tiny_project(root)

    def edit(p):
        tiny_training(p, finetune_updates=15)
        p["compress"] = {"sparsities": [0.5], "pruning": "global", "bits": [8], "granularity": "channel",
                         "onnx_sparsities": [], "int8_min_agreement": 0.9, "int8_check_examples": 32,
                         "recovery": {"seconds": None, "updates": 4}}
    set_params(project, edit)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        mp.setenv("DATA_MIRROR", str(root / "mirror"))
        for name in ("wikitext2", "sst2"):
            fetch.main([name])
        prepare_mlm.main([])
        prepare_glue.main(["sst2"])
        pretrain.main(["T1"])
        finetune.main(["T1", "sst2"])
    return project


@pytest.fixture(params=["default", UNSAFE_ENV])
def marker(request, project, monkeypatch, tmp_path):
    """The file the payload would create; the test runs in the project, with or without the variable."""
    monkeypatch.chdir(project)
    if request.param == UNSAFE_ENV:
        monkeypatch.setenv(UNSAFE_ENV, "1")
    else:
        monkeypatch.delenv(UNSAFE_ENV, raising=False)
    yield tmp_path / "payload-ran"
    shutil.rmtree(WORK_DIR, ignore_errors=True)


@contextlib.contextmanager
def planted(path: Path, marker: Path):
    """`path` replaced, for the block, by a checkpoint-shaped file whose unpickling would create `marker`."""
    saved = path.read_bytes() if path.exists() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.zeros(2)}, "args": None, "extra_state": Payload(marker)}, path)
    try:
        yield path
    finally:
        if saved is None:
            path.unlink()
        else:
            path.write_bytes(saved)


def assert_refused(error: Exception, path: Path, marker: Path) -> None:
    message = str(error)
    assert isinstance(error, StageError), message
    assert message.startswith(f"{path}: refused"), message     # names the file
    assert "posix.system" in message, message                  # says why
    assert "weights_only" not in message, message              # never advises loading it unsafely
    assert not marker.exists(), "the payload ran"


def test_the_projects_loader_refuses_it(marker, tmp_path):
    with planted(tmp_path / "evil.pt", marker) as evil, pytest.raises(StageError) as e:
        load_checkpoint(evil)
    assert_refused(e.value, evil, marker)


def test_finetune_refuses_a_pretrained_checkpoint_that_fairseq_loads(marker):
    with planted(Path("models/pretrain/T1/checkpoint.pt"), marker) as evil, pytest.raises(StageError) as e:
        finetune.main(["T1", "sst2"])
    assert_refused(e.value, evil, marker)


def test_compress_refuses_a_fine_tuned_checkpoint(marker):
    with planted(Path("models/finetune/T1-sst2/checkpoint.pt"), marker) as evil, pytest.raises(StageError) as e:
        compress.main(["glue", "T1", "sst2"])
    assert_refused(e.value, evil, marker)


def test_a_resumed_run_refuses_its_work_dirs_checkpoint_instead_of_calling_it_truncated(marker, monkeypatch):
    monkeypatch.setattr(harness, "run_fingerprint", lambda args: "the interrupted run")  # same configuration
    work = WORK_DIR / "pretrain" / "T1"
    work.mkdir(parents=True)
    (work / "fingerprint.json").write_text("the interrupted run")
    with planted(work / "checkpoint_last.pt", marker) as evil, pytest.raises(StageError) as e:
        pretrain.main(["T1"])
    assert_refused(e.value, evil, marker)


def test_recovery_refuses_its_work_dirs_checkpoint(marker, monkeypatch):
    monkeypatch.setattr(harness, "run_fingerprint", lambda args: "the interrupted recovery")
    work = WORK_DIR / "compress" / "T1-sst2" / "s0.50"
    work.mkdir(parents=True)
    (work / "fingerprint.json").write_text("the interrupted recovery")
    with planted(work / "checkpoint_last.pt", marker) as evil, pytest.raises(StageError) as e:
        compress.main(["glue", "T1", "sst2"])
    assert_refused(e.value, evil, marker)


def fairseq_variant(directory: Path, source: Path) -> Path:
    directory.mkdir()
    (directory / "variant.json").write_text(json.dumps({"format": "fairseq fp32", "source": str(source)}))
    return directory


def test_a_compressed_variants_source_is_refused(marker, tmp_path):
    variant = fairseq_variant(tmp_path / "s0.50-fp32", tmp_path / "source.pt")
    torch.save({}, variant / WEIGHTS_FILE)
    with planted(tmp_path / "source.pt", marker) as evil, pytest.raises(StageError) as e:
        load_variant(variant)
    assert_refused(e.value, evil, marker)


def test_a_compressed_variants_weights_are_refused(marker, tmp_path):
    variant = fairseq_variant(tmp_path / "s0.50-fp32", Path("models/finetune/T1-sst2/checkpoint.pt").resolve())
    with planted(variant / WEIGHTS_FILE, marker) as evil, pytest.raises(StageError) as e:
        load_variant(variant)
    assert_refused(e.value, evil, marker)
