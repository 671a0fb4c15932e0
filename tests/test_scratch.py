"""Scratch a killed stage leaves behind is removed by the next run of any stage: DVC may restore the killed
stage from its run-cache and never run it again to clean up after itself. Scratch that a running
process still writes is left alone."""
import os
import subprocess
import sys
from pathlib import Path

from conftest import kill_once_exists
from stages import fetch, prepare_mlm


def python(*args, env=(), **kwargs):
    env = dict(os.environ, PYTHONPATH=str(Path.cwd()), **dict(env))
    return subprocess.Popen([sys.executable, *args], env=env, text=True, **kwargs)


def test_a_killed_stages_scratch_is_removed_by_the_next_stage_run_and_a_live_ones_kept(tiny_project):
    fetch.main(["wikitext2"])
    killed_scratch = Path("data/bin/.mlm.tmp")
    stage = python("-m", "stages.prepare_mlm", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_once_exists(stage, killed_scratch, timeout=120)
    assert killed_scratch.is_dir()  # what a kill -9 leaves: no cleanup runs

    live_scratch = Path("models/compressed/.T1-sst2.tmp")  # a stage still writing it
    live = python("-c", "import time\nfrom lib.files import atomic_dir\n"
                        "with atomic_dir('models/compressed/T1-sst2'):\n    print('writing', flush=True)\n"
                        "    time.sleep(120)", stdout=subprocess.PIPE)
    try:
        assert live.stdout.readline() == "writing\n"
        other = python("-m", "stages.fetch", "sst2", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, log = other.communicate(timeout=120)
        assert other.returncode == 0, log
        assert not killed_scratch.exists(), log
        assert f"removing {killed_scratch}, left by an interrupted run" in log
        assert live_scratch.is_dir()
    finally:
        live.kill()
        live.wait()


def test_a_killed_prepare_leaves_its_scratch_beside_its_output_not_in_the_system_temp(tiny_project, tmp_path):
    """prepare_glue's label files for fairseq-preprocess go to data/bin/glue/.sst2.scratch.tmp/, which the next
    stage run sweeps: a kill -9 there leaves nothing in the system's temp directory, where nothing would
    remove it."""
    for name in ("wikitext2", "sst2"):
        fetch.main([name])
    prepare_mlm.main([])
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    scratch = Path("data/bin/glue/.sst2.scratch.tmp")
    stage = python("-m", "stages.prepare_glue", "sst2", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   env={"TMPDIR": str(system_tmp)})
    kill_once_exists(stage, scratch / "dev.label", timeout=120)  # then fairseq-preprocess binarizes the labels
    assert list(system_tmp.iterdir()) == []
    other = python("-m", "stages.fetch", "sst2", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, log = other.communicate(timeout=120)
    assert other.returncode == 0, log
    assert f"removing {scratch}, left by an interrupted run" in log
    assert not scratch.exists() and not Path("data/bin/glue/.sst2.tmp").exists()
