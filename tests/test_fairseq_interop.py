"""The checkpoints the pipeline writes open in fairseq's own tools as they are: fairseq-generate,
fairseq-interactive and RobertaModel.from_pretrained call torch.load without arguments, which since torch 2.6
is the weights-only loader with no allowlist, so a checkpoint must hold only tensors, dicts, lists, numbers,
strings and None (lib/checkpoints.py: plain_config). Each load runs in a fresh process with torch's defaults
(no TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD): in this one the project's loader has widened torch's allowlist."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from conftest import venv_bin
from lib.checkpoints import allow_checkpoint_globals, export_checkpoint

MT_CHECKPOINT = "models/mt/T1/checkpoint.pt"


def torch_defaults() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    return {**env, "OMP_NUM_THREADS": "1"}


def run(command: list, cwd: Path, stdin: str | None = None) -> str:
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=torch_defaults(), input=stdin,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def hypotheses(output: str) -> list[str]:
    """fairseq's detokenized hypotheses (D-<id> lines: id, score, text)."""
    return [line.split("\t")[2] for line in output.splitlines() if line.startswith("D-")]


def test_export_leaves_only_what_torchs_default_loader_accepts(tmp_path):
    """Every checkpoint the pipeline writes goes through export_checkpoint (pretrain, finetune, train_mt,
    compress's recovered models): fairseq's Namespace of model options comes out as a dict, nested values too."""
    allow_checkpoint_globals()
    options = argparse.Namespace(arch="transformer", layers=[2, 2], nested=argparse.Namespace(dim=32), data=None)
    torch.save({"model": {"w": torch.ones(2, dtype=torch.float16)}, "args": None,
                "cfg": {"model": options, "task": {"_name": "translation"}},
                "extra_state": {"metrics": {}, "previous_training_time": 3.0}, "last_optimizer_state": {"x": 1}},
               tmp_path / "trained.pt")
    export_checkpoint(tmp_path / "trained.pt", tmp_path / "checkpoint.pt")
    loaded = run([sys.executable, "-c", "import json, sys, torch\n"
                  "print(json.dumps(torch.load(sys.argv[1])['cfg']))", tmp_path / "checkpoint.pt"], tmp_path)
    assert json.loads(loaded) == {"model": {"arch": "transformer", "layers": [2, 2], "nested": {"dim": 32},
                                            "data": None}, "task": {"_name": "translation"}}


def test_fairseq_generate_translates_with_a_trained_checkpoint(trained_project):
    output = run([venv_bin() / "fairseq-generate", "data/bin/mt", "--path", MT_CHECKPOINT, "--beam", "4",
                  "--remove-bpe", "sentencepiece", "--gen-subset", "test", "--cpu", "--batch-size", "32",
                  "--max-len-a", "1", "--max-len-b", "10"], trained_project)
    sources = [line for line in output.splitlines() if line.startswith("S-")]
    found = hypotheses(output)
    assert sources and len(found) == len(sources)
    assert any(h.strip() for h in found)
    assert "BLEU4 = " in output


def test_fairseq_interactive_translates_raw_text(trained_project):
    sentence = (trained_project / "data/bin/mt/test.raw.en").read_text().splitlines()[0]
    output = run([venv_bin() / "fairseq-interactive", "data/bin/mt", "--path", MT_CHECKPOINT, "--beam", "4",
                  "--bpe", "sentencepiece", "--sentencepiece-model", "data/bin/mt/spm.model", "--cpu",
                  "--max-len-a", "1", "--max-len-b", "10"], trained_project, stdin=sentence + "\n")
    assert len(hypotheses(output)) == 1


def test_roberta_from_pretrained_fills_a_mask_and_encodes(trained_project):
    script = """
import json, os
from fairseq.models.roberta import RobertaModel
roberta = RobertaModel.from_pretrained("models/pretrain/T1", checkpoint_file="checkpoint.pt",
                                       data_name_or_path=os.path.abspath("data/bin/mlm"), bpe="sentencepiece",
                                       sentencepiece_model="data/bin/mlm/spm.model").eval()
filled = roberta.fill_mask("the cat sat on the <mask>", topk=3)
tokens = roberta.encode("the cat sat on the mat")
print(json.dumps({"filled": [f[0] for f in filled], "tokens": len(tokens),
                  "features": list(roberta.extract_features(tokens).shape)}))
"""
    found = json.loads(run([sys.executable, "-c", script], trained_project).splitlines()[-1])
    assert len(found["filled"]) == 3 and all(f.startswith("the cat sat on the") for f in found["filled"])
    assert found["features"] == [1, found["tokens"], 32]  # T1's hidden size
