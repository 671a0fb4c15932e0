"""A compression stage killed during recovery fine-tuning resumes it from models/.work/compress/<model>/."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import set_params
from stages import compress
from lib.harness import WORK_DIR


def read_curve(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_a_killed_recovery_resumes_at_its_last_point(in_trained_project, tmp_path):
    def edit(p):
        p["compress"] = {"sparsities": [0.5], "pruning": "global", "bits": [8], "granularity": "channel",
                         "onnx_sparsities": [], "int8_min_agreement": 0.9, "int8_check_examples": 32,
                         "recovery": {"seconds": None, "updates": 60}}
    set_params(in_trained_project, edit)  # finetune.validate_every is 15: points at 15, 30, 45, 60
    work_curve = WORK_DIR / "compress" / "T1-sst2" / "s0.50" / "curve.csv"
    log = tmp_path / "stage.log"  # a file, not a pipe: fairseq's log would fill a pipe nobody reads yet
    stage = subprocess.Popen([sys.executable, "-m", "stages.compress", "glue", "T1", "sst2"],
                             env=dict(os.environ, PYTHONPATH=str(Path.cwd())), stdout=subprocess.DEVNULL,
                             stderr=log.open("w"))
    deadline = time.time() + 300
    while not (work_curve.exists() and len(read_curve(work_curve)) >= 2):  # point 1's checkpoint is written
        assert stage.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    stage.send_signal(signal.SIGKILL)
    stage.wait()
    killed = read_curve(work_curve)

    compress.main(["glue", "T1", "sst2"])
    curve = read_curve("models/compressed/T1-sst2/recovered/s0.50/curve.csv")
    assert [int(r["updates"]) for r in curve] == [15, 30, 45, 60]
    assert curve[0] == killed[0]  # the killed run's point, kept rather than trained again
    assert not (WORK_DIR / "compress" / "T1-sst2").exists()
