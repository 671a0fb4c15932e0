"""Bad days: a full disk stops a stage with one line (the stage, the path it was writing, the bytes free there,
what to do) and leaves no half-written output; under DVC a failed stage says how to get back what DVC removed;
a user's own file:// dataset is named as the user's file in every error."""
import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import set_params, sha256
from lib.errors import DataError
from lib.stage import run_stage
from stages import fetch

LOGGED = re.compile(r"\[\d\d:\d\d:\d\d\] ")  # lib.errors.log's lines


def run_in_process(main, monkeypatch, capsys, *argv) -> str:
    """run_stage(main) as `python -m stages.<module> ARGV` runs it: its exit code must be 2; returns stderr
    without the progress log's lines."""
    monkeypatch.setattr(sys, "argv", [f"stages/{main.__module__.rsplit('.', 1)[-1]}.py", *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_stage(main)
    assert exit_.value.code == 2
    return "".join(line for line in capsys.readouterr().err.splitlines(keepends=True) if not LOGGED.match(line))


def no_space(path=None, path2=None) -> OSError:
    """What a write on a full disk raises: a write() names no file, a copy names both."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path, None, path2)


def test_a_full_disk_stops_a_stage_with_one_line_and_keeps_the_earlier_output(tiny_project, monkeypatch, capsys):
    fetch.main(["sst2"])
    before = {p: sha256(p) for p in Path("data/raw/sst2").iterdir()}

    def half_written(path, obj):  # the disk fills while meta.json is written
        Path(path).write_text("{\n")
        raise no_space()
    monkeypatch.setattr(fetch, "write_json", half_written)
    err = run_in_process(fetch.main, monkeypatch, capsys, "sst2")
    assert err.count("\n") == 1, err  # one line, no traceback
    assert err.startswith("error: python -m stages.fetch sst2: no space left on device writing "
                          "data/raw/.sst2.tmp ("), err
    free = shutil.disk_usage(".").free
    shown = int(err.split(" (")[1].split(" bytes free on that file system")[0].replace(",", ""))
    assert abs(shown - free) < 64 << 20, err
    assert "Free space there or move the workspace to a larger disk, then run the stage again" in err
    assert {p: sha256(p) for p in Path("data/raw/sst2").iterdir()} == before  # nothing half-written kept
    assert not Path("data/raw/.sst2.tmp").exists()


def test_a_full_disk_in_a_copy_names_its_destination_and_under_dvc_the_stage(tmp_path, monkeypatch, capsys):
    """fairseq copying checkpoint_last.pt to checkpoint_best.pt when the disk fills (pretrain's case)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_STAGE", "pretrain@L2-H256")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    work = "models/.work/pretrain/L2-H256"

    def pretrain(argv):
        raise no_space(f"{work}/checkpoint_1_10.pt", f"{work}/checkpoint_best.pt")
    pretrain.__module__ = "stages.pretrain"
    err = run_in_process(pretrain, monkeypatch, capsys, "L2-H256")
    line, *hints = err.splitlines()
    assert line.startswith(f"error: pretrain@L2-H256: no space left on device writing {work}/checkpoint_best.pt ("), err
    assert "training resumes from its last checkpoint" in line
    assert hints == ["  DVC removed this stage's earlier outputs before running it; `dvc checkout pretrain@L2-H256` "
                     "brings back the last good ones (those of dvc.lock)."], err


def test_a_full_disk_in_a_worker_or_an_open_file_names_the_scratch_being_written(tiny_project, monkeypatch, capsys):
    """A write() on an open file (or a worker process's error, re-raised in the stage) names no path: the
    error names the stage's scratch, where it was writing, and that scratch is gone."""
    from lib.files import scratch_dir

    def prepare(argv):
        with scratch_dir(Path("data/bin/mlm")) as tmp:
            (tmp / "train.spm").write_text("half")
            try:
                raise no_space()
            except OSError as e:  # as fairseq-preprocess's pool re-raises a worker's error
                raise RuntimeError("worker failed") from e
    prepare.__module__ = "stages.prepare_mlm"
    err = run_in_process(prepare, monkeypatch, capsys)
    assert err.startswith("error: python -m stages.prepare_mlm: no space left on device writing "
                          "data/bin/.mlm.scratch.tmp ("), err
    assert not Path("data/bin/.mlm.scratch.tmp").exists()


def can_mount_tmpfs(path: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(path)], capture_output=True).returncode:
        return False
    return True


def test_a_real_full_disk_a_small_tmpfs_under_data(tiny_project):
    data = tiny_project / "data"
    if not can_mount_tmpfs(data):
        pytest.skip("mounting a tmpfs needs root (and a kernel that lets this container mount)")
    try:
        result = subprocess.run([sys.executable, "-m", "stages.fetch", "wikitext2"], capture_output=True, text=True,
                                env=dict(os.environ, PYTHONPATH=str(tiny_project)), timeout=120)
        assert result.returncode == 2, result.stderr
        err = result.stderr.splitlines()[-1]
        assert "Traceback" not in result.stderr, result.stderr
        assert err.startswith("error: python -m stages.fetch wikitext2: no space left on device writing "
                              "data/raw/.wikitext2.tmp ("), err
        free = shutil.disk_usage(data).free
        assert f"({free:,} bytes free on that file system)" in err, err
        assert sorted(p.name for p in (data / "raw").iterdir()) == []  # nothing half-written left
    finally:
        subprocess.run(["umount", str(data)], check=True)


# ---------------------------------------------------------------- a user's own file:// dataset

@pytest.fixture
def own_sst2(tiny_project, tmp_path, monkeypatch):
    """sst2 as a user's own dataset: its files in a directory of the user's, named by file:// URLs, and
    no mirror."""
    own = tmp_path / "mine"
    shutil.copytree(Path(os.environ["DATA_MIRROR"]) / "sst2", own)
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "empty-mirror"))

    def edit(p):
        for fname, entry in p["datasets"]["sst2"]["files"].items():
            entry["url"] = f"file://{own / fname}"
    set_params(tiny_project, edit)
    return own


def test_a_bad_row_in_a_users_own_file_names_that_file(tiny_project, own_sst2):
    dev = own_sst2 / "dev.tsv"
    lines = dev.read_text().splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\tmaybe"
    dev.write_text("\n".join(lines) + "\n")
    set_params(tiny_project, lambda p: p["datasets"]["sst2"]["files"]["dev.tsv"].update(sha256=sha256(dev)))
    with pytest.raises(DataError) as e:
        fetch.main(["sst2"])
    assert str(e.value).startswith(f"{dev}:4: label 'maybe'"), e.value
    assert not Path("data/downloads/sst2").exists()  # read where it is, not copied


def test_a_changed_users_own_file_is_named_by_its_checksum_error(tiny_project, own_sst2):
    train = own_sst2 / "train.tsv"
    train.write_text(train.read_text() + "great fun\t1\n")
    with pytest.raises(DataError) as e:
        fetch.main(["sst2"])
    assert str(e.value).startswith(f"{train}: sha256 mismatch for {train} (file://{train})"), e.value
    assert "data/downloads" not in str(e.value)


def test_a_users_own_file_is_fetched_in_place(tiny_project, own_sst2):
    fetch.main(["sst2"])
    assert Path("data/raw/sst2/train.tsv").is_file()
    assert not Path("data/downloads").exists()
