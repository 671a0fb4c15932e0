"""The console of a stage: a progress line and one summary line for a training run, its full log in
reports/logs/<stage>.log; dependencies' known-harmless warnings silenced at their source while a warning of
ours still shows; verbose (-v, PIPELINE_VERBOSE=1) shows everything."""
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import set_params, tiny_training
from stages import fetch, prepare_mlm

# what a stage printed on the console before (measured on this run: 130 lines) and no longer does
NOISE = ["Please install tensorboardX", "no longer experimental", "version_base parameter", "DEBUG",
         "RobertaModel(", "INFO", "pin_memory", "torch.cuda.amp.autocast"]


def run(project, *args, **env):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=project,
                          env={**os.environ, "PYTHONPATH": str(project), **env})


@pytest.fixture
def mlm_project(tiny_project):
    set_params(tiny_project, tiny_training)
    fetch.main(["wikitext2"])
    prepare_mlm.main([])
    return tiny_project


def test_a_training_stage_shows_progress_and_one_summary_line_and_logs_everything_to_a_file(mlm_project):
    result = run(mlm_project, "-m", "stages.pretrain", "T1", PIPELINE_PROGRESS_SECONDS="0")
    assert result.returncode == 0, result.stderr
    console = result.stdout + result.stderr
    lines = console.splitlines()
    assert lines[0].endswith("python -m stages.pretrain T1: full log in reports/logs/pretrain-T1.log"), console
    # not a terminal: a plain line per 10% of the budget (at most one per PIPELINE_PROGRESS_SECONDS), no bar
    progress = [line for line in lines if "% " in line or "%," in line]
    assert any("pretrain T1: 100%, 12/12 updates, loss " in line and "updates/s" in line for line in progress), console
    assert "\r" not in console
    assert lines[-1].split("] ", 1)[1].startswith("pretrain T1: 12 updates in "), console
    assert " bits" in lines[-1] and "unigram" in lines[-1], console
    assert not [n for n in NOISE if n in console], console
    assert len(lines) <= 12, console
    log = (mlm_project / "reports/logs/pretrain-T1.log").read_text()
    for expected in ("INFO fairseq_cli.train: RobertaModel(", "INFO train_inner:", "pretrain T1: update 12,",
                     "pretrain T1: 12 updates in "):
        assert expected in log
    assert "DEBUG" not in log and "tensorboardX" not in log


def test_harmless_dependency_warnings_are_silenced_ours_shown_and_verbose_shows_all(tiny_project):
    (tiny_project / "stages" / "noisy.py").write_text(textwrap.dedent('''
        import logging, warnings
        from lib.errors import log
        from lib.stage import run_stage

        def main(argv):
            warnings.warn("hydra.experimental.compose() is no longer experimental. Use hydra.compose()")
            logging.getLogger("fairseq.tasks.text_to_speech").info("Please install tensorboardX: pip install tensorboardX")
            logging.getLogger("hydra.core.utils").debug("Setting JobRuntime:name=UNKNOWN_NAME")
            logging.getLogger("fairseq_cli.train").info("fairseq chatter")
            logging.getLogger("fairseq.trainer").warning("a real fairseq warning")
            warnings.warn("a warning of our own")
            log(f"noisy: done {argv}")

        if __name__ == "__main__":
            run_stage(main)
    '''))
    quiet = run(tiny_project, "-m", "stages.noisy", "x")
    assert quiet.returncode == 0, quiet.stderr
    assert "a warning of our own" in quiet.stderr and "a real fairseq warning" in quiet.stderr
    assert "noisy: done ['x']" in quiet.stderr
    for silenced in ("no longer experimental", "tensorboardX", "JobRuntime", "fairseq chatter"):
        assert silenced not in quiet.stderr, quiet.stderr
    log = (tiny_project / "reports/logs/noisy-x.log").read_text()
    assert "fairseq chatter" in log and "a warning of our own" in log and "noisy: done" in log
    assert "JobRuntime" not in log and "no longer experimental" not in log

    for verbose in (run(tiny_project, "-m", "stages.noisy", "x", "-v"),
                    run(tiny_project, "-m", "stages.noisy", "x", PIPELINE_VERBOSE="1")):
        assert verbose.returncode == 0, verbose.stderr
        assert "noisy: done ['x']" in verbose.stderr  # -v is not passed on to the stage
        for shown in ("no longer experimental", "tensorboardX", "JobRuntime", "fairseq chatter",
                      "a warning of our own", "a real fairseq warning"):
            assert shown in verbose.stderr, verbose.stderr
        assert verbose.stderr.count("noisy: done") == 1  # our lines once, not again through logging


def test_a_failed_stage_names_its_log_file(tiny_project):
    result = run(tiny_project, "-m", "stages.pretrain", "NOPE")
    assert result.returncode == 2
    *before, last = result.stderr.splitlines()
    assert last.startswith("error: "), result.stderr
    assert any(line.endswith("failed; full log in reports/logs/pretrain-NOPE.log") for line in before), result.stderr
    assert last.removeprefix("error: ") in (tiny_project / "reports/logs/pretrain-NOPE.log").read_text()


@pytest.mark.parametrize("interval, lines", [(30, 10), (60, 6)])
def test_off_a_terminal_a_plain_line_every_tenth_of_the_budget_at_most_one_per_interval(monkeypatch, capsys,
                                                                                        interval, lines):
    import lib.progress
    clock = [1000.0]
    monkeypatch.setattr(lib.progress.time, "time", lambda: clock[0])
    monkeypatch.setenv("PIPELINE_PROGRESS_SECONDS", str(interval))
    progress = lib.progress.Progress("pretrain X", ["--stop-time-hours", 0.1])  # 360 s
    for second in range(1, 361):  # an update a second, 100 tokens each
        clock[0] += 1
        progress.update(second, float(second), 5.0, 100)
    progress.close()
    printed = capsys.readouterr().err.splitlines()
    assert len(printed) == lines, printed
    assert printed[-1].endswith("pretrain X: 100%, 360/360 s, 360 updates, loss 5.000, 1.0 updates/s, "
                                "100 tokens/s, 0 s left"), printed
