"""Budgeted training on tiny models: curves, repeatability, kill-and-resume, NaN and memory faults."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from conftest import set_params, tiny_training
from stages import fetch, finetune, prepare_glue, prepare_mlm, prepare_mt, pretrain, train_mt
from lib.checkpoints import load_checkpoint
from lib.errors import StageError
from lib.harness import WORK_DIR

def read_curve(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def prepared(tiny_project):
    set_params(tiny_project, tiny_training)
    for name in ("wikitext2", "sst2", "multi30k"):
        fetch.main([name])
    prepare_mlm.main([])
    prepare_glue.main(["sst2"])
    prepare_mt.main([])
    return tiny_project


def test_pretrain_writes_a_curve_and_a_model_only_checkpoint(prepared):
    pretrain.main(["T1"])
    curve = read_curve("reports/curves/pretrain-T1.csv")
    assert [int(r["updates"]) for r in curve] == [4, 8, 12]
    assert all(float(r["valid_ppl"]) > 1 and float(r["flops"]) > 0 for r in curve)
    assert [int(r["tokens"]) for r in curve] == [256 * 4, 256 * 8, 256 * 12]
    seconds = [float(r["seconds"]) for r in curve]
    assert seconds == sorted(seconds)
    assert float(curve[-1]["valid_loss"]) < float(curve[0]["valid_loss"])
    state = load_checkpoint(Path("models/pretrain/T1/checkpoint.pt"))
    assert state["last_optimizer_state"] is None
    assert "previous_training_time" not in state["extra_state"]
    assert not (WORK_DIR / "pretrain" / "T1").exists()  # scratch state removed once done


def test_update_budget_is_bit_for_bit_repeatable(prepared):
    runs = []
    for _ in range(2):
        pretrain.main(["T2"])
        curve = [{k: v for k, v in r.items() if k != "seconds"} for r in read_curve("reports/curves/pretrain-T2.csv")]
        weights = load_checkpoint(Path("models/pretrain/T2/checkpoint.pt"))["model"]
        runs.append((curve, weights))
    (curve_a, weights_a), (curve_b, weights_b) = runs
    assert curve_a == curve_b
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_finetune_learns_a_separable_task_from_the_pretrained_size(prepared):
    pretrain.main(["T1"])
    finetune.main(["T1", "sst2"])
    curve = read_curve("reports/curves/finetune-T1-sst2.csv")
    assert [int(r["updates"]) for r in curve] == [15, 30, 45, 60]
    assert max(float(r["valid_accuracy"]) for r in curve) >= 90  # label = first word great/awful
    assert float(curve[-1]["train_loss"]) < float(curve[0]["train_loss"])
    assert Path("models/finetune/T1-sst2/checkpoint.pt").is_file()


def test_glue_batches_group_sentences_of_similar_length_while_fairseq_trains(prepared):
    """fairseq's sentence_prediction orders examples by a shuffle only; under the harness's hooks they are in
    length order (so a batch pads little), shuffled among equal lengths, and fairseq's order is back after."""
    import numpy as np
    from fairseq.tasks.sentence_prediction import SentencePredictionConfig, SentencePredictionTask
    from lib.harness import fairseq_hooks
    task = SentencePredictionTask.setup_task(SentencePredictionConfig(data="data/bin/glue/sst2", num_classes=2, seed=1))

    def lengths_in_order():
        dataset = task.load_dataset("train")
        return dataset.sizes[0][dataset.ordered_indices()]

    with fairseq_hooks(None, None):
        ordered = lengths_in_order()
    assert np.all(np.diff(ordered) >= 0) and len(set(ordered)) > 1
    assert np.any(np.diff(lengths_in_order()) < 0)


def test_train_mt_curve_carries_bleu(prepared):
    train_mt.main(["T1"])
    curve = read_curve("reports/curves/train_mt-T1.csv")
    assert [int(r["updates"]) for r in curve] == [4, 8, 12]
    assert all(r["valid_bleu"] != "" for r in curve)
    assert float(curve[-1]["valid_loss"]) < float(curve[0]["valid_loss"])
    assert Path("models/mt/T1/checkpoint.pt").is_file()


def stage_process(*args):
    env = dict(os.environ, PYTHONPATH=str(Path.cwd()))
    # SIGINT as in a terminal: a shell starts background jobs (a CI runner's, say) with it ignored, and
    # children inherit that, so Ctrl-C would never reach the stage
    return subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def kill_after_points(process, work_curve: Path, points: int, timeout=300, sig=signal.SIGKILL):
    kill_when(process, work_curve, lambda rows: len(rows) >= points, timeout, sig)


def kill_when(process, work_curve: Path, ready, timeout=300, sig=signal.SIGKILL):
    """Send `sig` to the stage once ready(rows of its work curve) holds, and wait for it to end."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if work_curve.exists() and ready(read_curve(work_curve)):
            process.send_signal(sig)
            # Python drops a KeyboardInterrupt raised while a finalizer runs ("Exception ignored in"):
            # as a user presses Ctrl-C again, so does the test, until the process is gone
            while True:
                try:
                    process.wait(timeout=0.5)
                    return
                except subprocess.TimeoutExpired:
                    process.send_signal(sig)
        assert process.poll() is None, f"stage ended before it could be killed: {process.stderr.read()}"
        time.sleep(0.05)
    process.kill()
    raise AssertionError("no curve points in time")


def validation_interval(seconds: list[float]) -> float:
    """The longest stretch between two curve points of one process (a resumed curve's gap at the kill
    is not one)."""
    return max(b - a for a, b in zip(seconds, seconds[1:]))


# kill -9, preemption, Ctrl-C
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda sig: sig.name)
def test_kill_and_resume_with_an_update_budget(prepared, sig):
    set_params(prepared, lambda p: p["pretrain"]["recipe"].update(budget={"seconds": None, "updates": 40}))
    work = WORK_DIR / "pretrain" / "T2"
    process = stage_process("stages.pretrain", "T2")
    kill_after_points(process, work / "curve.csv", 3, sig=sig)
    assert (work / "checkpoint_last.pt").exists(), (sorted(p.name for p in work.glob("*")), process.stderr.read()[-4000:])
    pretrain.main(["T2"])  # what the next `dvc repro` runs
    updates = [int(r["updates"]) for r in read_curve("reports/curves/pretrain-T2.csv")]
    assert updates == list(range(4, 41, 4))  # every point once, none redone twice, none lost


def test_resume_survives_a_kill_during_a_checkpoint_copy(prepared):
    """fairseq copies the checkpoint to checkpoint_last.pt non-atomically; a kill there truncates it."""
    set_params(prepared, lambda p: p["pretrain"]["recipe"].update(budget={"seconds": None, "updates": 24}))
    work = WORK_DIR / "pretrain" / "T2"
    kill_after_points(stage_process("stages.pretrain", "T2"), work / "curve.csv", 3)
    time.sleep(0.5)
    last = work / "checkpoint_last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    pretrain.main(["T2"])
    updates = [int(r["updates"]) for r in read_curve("reports/curves/pretrain-T2.csv")]
    assert updates == list(range(4, 25, 4))


def test_kill_and_resume_with_a_time_budget(prepared):
    budget = 12.0
    set_params(prepared, lambda p: p["pretrain"]["recipe"].update(budget={"seconds": budget, "updates": None}))
    work = WORK_DIR / "pretrain" / "T2"
    kill_after_points(stage_process("stages.pretrain", "T2"), work / "curve.csv", 2)
    killed = [float(r["seconds"]) for r in read_curve(work / "curve.csv")]
    pretrain.main(["T2"])
    curve = read_curve("reports/curves/pretrain-T2.csv")
    seconds = [float(r["seconds"]) for r in curve]
    interval = validation_interval(killed)
    # resumed, not restarted: the curve continues from the killed run's points
    assert seconds[0] <= killed[-1] < budget
    # training time spent matches the budget within one validation interval
    assert budget <= seconds[-1] <= budget + interval + 1.0, (seconds, interval)


def test_a_late_kill_still_ends_within_one_interval_of_a_time_budget(prepared, monkeypatch):
    """Killed close to its budget, the resumed run must not count its own start-up (made slow here, as
    loading a large corpus is) as training time: the killed run counted its own, and the resumed one's
    alone would overshoot the budget before the first update could check it."""
    budget = 6.0
    set_params(prepared, lambda p: p["pretrain"]["recipe"].update(budget={"seconds": budget, "updates": None}))
    work = WORK_DIR / "pretrain" / "T2"
    kill_when(stage_process("stages.pretrain", "T2"), work / "curve.csv",
              lambda rows: len(rows) >= 2 and float(rows[-1]["seconds"]) >= budget / 2)
    killed = [float(r["seconds"]) for r in read_curve(work / "curve.csv")]
    from fairseq.trainer import Trainer
    get_train_iterator, slowed = Trainer.get_train_iterator, []

    def slow_start(self, *args, **kwargs):
        if not slowed:  # once: the start-up, not every epoch
            slowed.append(budget)
            time.sleep(budget)
        return get_train_iterator(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "get_train_iterator", slow_start)
    pretrain.main(["T2"])
    assert slowed
    seconds = [float(r["seconds"]) for r in read_curve("reports/curves/pretrain-T2.csv")]
    interval = validation_interval(killed)
    assert seconds[0] <= killed[-1]  # resumed
    assert budget <= seconds[-1] <= budget + interval + 1.0, (seconds, interval)


def test_changed_flags_start_an_interrupted_run_over(prepared):
    set_params(prepared, lambda p: p["pretrain"]["recipe"].update(budget={"seconds": None, "updates": 24}))
    work = WORK_DIR / "pretrain" / "T2"
    kill_after_points(stage_process("stages.pretrain", "T2"), work / "curve.csv", 2)
    killed = read_curve(work / "curve.csv")
    set_params(prepared, lambda p: p["pretrain"]["recipe"].update(lr=0.001))
    pretrain.main(["T2"])
    curve = read_curve("reports/curves/pretrain-T2.csv")
    assert [int(r["updates"]) for r in curve] == list(range(4, 25, 4))
    assert curve[0]["valid_loss"] != killed[0]["valid_loss"]  # trained again at the new learning rate


def test_nan_loss_names_the_size_and_update_and_keeps_the_checkpoint(prepared, monkeypatch):
    from fairseq.criterions.masked_lm import MaskedLmLoss
    forward, calls = MaskedLmLoss.forward, {"n": 0}

    def poisoned(self, model, sample, reduce=True):
        loss, sample_size, logging_output = forward(self, model, sample, reduce)
        calls["n"] += 1
        if calls["n"] > 6 and model.training:  # after the first curve point (4 updates)
            loss = loss * float("nan")
        return loss, sample_size, logging_output

    monkeypatch.setattr(MaskedLmLoss, "forward", poisoned)
    with pytest.raises(StageError) as e:
        pretrain.main(["T1"])
    assert "pretrain T1: loss became NaN/inf after update 4" in str(e.value)
    assert (WORK_DIR / "pretrain" / "T1" / "checkpoint_last.pt").exists()
    assert not Path("models/pretrain/T1").exists()


def test_out_of_memory_names_the_size_and_suggests_a_smaller_batch(prepared, monkeypatch):
    from fairseq.criterions.masked_lm import MaskedLmLoss

    def out_of_memory(self, model, sample, reduce=True):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(MaskedLmLoss, "forward", out_of_memory)
    with pytest.raises(StageError) as e:
        pretrain.main(["T2"])
    assert "pretrain T2: does not fit in memory" in str(e.value)
    assert "Lower max_tokens" in str(e.value)


def test_unknown_size_is_refused(prepared):
    with pytest.raises(StageError) as e:
        pretrain.main(["L99-H1"])
    assert "SIZE one of pretrain.sizes ['T1', 'T2']" in str(e.value)


def test_data_parallel_training_runs_every_rank_and_counts_every_batch(prepared):
    """training.world_size 2 on CPU: the stage relaunches itself under torchrun (gloo); rank 0 writes."""
    set_params(prepared, lambda p: p["training"].update(world_size=2))
    pretrain.main(["T1"])
    curve = read_curve("reports/curves/pretrain-T1.csv")
    assert [int(r["updates"]) for r in curve] == [4, 8, 12]
    assert [int(r["tokens"]) for r in curve] == [2 * 256 * 4, 2 * 256 * 8, 2 * 256 * 12]  # both ranks' batches
    assert float(curve[-1]["valid_loss"]) < float(curve[0]["valid_loss"])
    assert load_checkpoint(Path("models/pretrain/T1/checkpoint.pt"))["cfg"]["distributed_training"][
        "distributed_world_size"] == 2
    assert not (WORK_DIR / "pretrain" / "T1").exists()


def test_data_parallel_world_size_must_match_torchrun(prepared, monkeypatch):
    set_params(prepared, lambda p: p["training"].update(world_size=2))
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(StageError) as e:
        pretrain.main(["T1"])
    assert "training.world_size is 2 but torchrun started 4 processes" in str(e.value)


def test_data_parallel_kill_and_resume(prepared):
    """A kill -9 of the stage stops its ranks too; the next run resumes on both ranks."""
    set_params(prepared, lambda p: (p["training"].update(world_size=2),
                                    p["pretrain"]["recipe"].update(budget={"seconds": None, "updates": 40})))
    work = WORK_DIR / "pretrain" / "T2"
    kill_after_points(stage_process("stages.pretrain", "T2"), work / "curve.csv", 3, timeout=600)
    deadline = time.time() + 30
    while subprocess.run(["pgrep", "-f", "stages.pretrain T2"], capture_output=True).returncode == 0:
        assert time.time() < deadline, "ranks still running after the stage was killed"
        time.sleep(0.5)
    pretrain.main(["T2"])
    updates = [int(r["updates"]) for r in read_curve("reports/curves/pretrain-T2.csv")]
    assert updates == list(range(4, 41, 4))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_precision_flags_train_every_stage_with_fairseqs_mixed_precision_trainer(prepared, monkeypatch,
                                                                                       precision):
    """The flags a CUDA run gets (`--fp16` or `--bf16`, no `--cpu`), run on this CPU: fairseq trains on the
    CPU when torch sees no GPU, so its mixed-precision trainer (half or bfloat16 model, fp32 master weights)
    runs under the stages' hooks. Not a GPU test: it catches flag and dtype faults, such as fairseq's --bf16
    implying a TPU, or half-precision weights reaching pruning and the CPU evaluation."""
    from lib import devices
    monkeypatch.setattr(devices, "training_device", lambda training: "cuda")
    # fairseq's flat fp32 master copy (fp16) is keyed by the parameters' device index: None on the CPU
    monkeypatch.setattr(torch.cuda, "current_device", lambda: None)
    set_params(prepared, lambda p: (p["training"].update(precision=precision),
                                    p["finetune"]["recipe"].update(budget={"seconds": None, "updates": 15})))
    pretrain.main(["T1"])
    finetune.main(["T1", "sst2"])
    train_mt.main(["T1"])
    for curve_file, checkpoint in (("pretrain-T1", "pretrain/T1"), ("finetune-T1-sst2", "finetune/T1-sst2"),
                                   ("train_mt-T1", "mt/T1")):
        curve = read_curve(f"reports/curves/{curve_file}.csv")
        losses = [float(r["valid_loss"]) for r in curve]
        assert len(curve) >= 1 and all(map(torch.isfinite, torch.tensor(losses))), (curve_file, losses)
        state = load_checkpoint(Path("models") / checkpoint / "checkpoint.pt")
        common = state["cfg"]["common"]
        assert common[precision] and not common["cpu"] and not common["tpu"], curve_file
        dtypes = {v.dtype for v in state["model"].values() if v.is_floating_point()}
        assert dtypes == {torch.float32}, (curve_file, dtypes)  # what pruning and ONNX export expect
    pretrain_losses = [float(r["valid_loss"]) for r in read_curve("reports/curves/pretrain-T1.csv")]
    assert pretrain_losses[-1] < pretrain_losses[0]


def test_cpu_bf16_trains_under_autocast_and_its_checkpoint_loads_in_fp32(prepared, monkeypatch):
    """On a CPU, --bf16 means autocast: the matmuls of every train step in bfloat16, while the weights,
    the optimizer and so the exported checkpoint stay fp32 (pruning and evaluation read them as such)."""
    set_params(prepared, lambda p: p["training"].update(precision="bf16"))
    from fairseq.criterions.masked_lm import MaskedLmLoss
    forward, autocast_seen = MaskedLmLoss.forward, []

    def recording(self, model, sample, reduce=True):
        autocast_seen.append(torch.is_autocast_enabled("cpu") and model.training)
        return forward(self, model, sample, reduce)

    monkeypatch.setattr(MaskedLmLoss, "forward", recording)
    pretrain.main(["T1"])
    assert any(autocast_seen) and not all(autocast_seen)  # train steps under autocast; validation not
    curve = read_curve("reports/curves/pretrain-T1.csv")
    assert float(curve[-1]["valid_loss"]) < float(curve[0]["valid_loss"])
    weights = load_checkpoint(Path("models/pretrain/T1/checkpoint.pt"))["model"]
    assert all(w.dtype == torch.float32 for w in weights.values() if w.is_floating_point())
    summary = json.loads(Path("models/pretrain/T1/summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["hardware"]


def test_auto_precision_follows_the_cpus_bf16_instructions():
    from lib.devices import training_precision
    from lib.schema import Training
    auto = Training(device="cpu", precision="auto", world_size=1, threads=None, loader_workers="auto", seed=1)
    assert training_precision(auto, cpu_flags=["avx2", "avx512f", "avx512_bf16"]) == "bf16"
    assert training_precision(auto, cpu_flags=["avx2", "amx_bf16"]) == "bf16"
    assert training_precision(auto, cpu_flags=["avx2", "avx512f", "avx512_vnni"]) == "fp32"
    with pytest.raises(StageError, match="fp16 trains on CUDA only"):
        training_precision(auto.model_copy(update={"precision": "fp16"}))


def test_loader_workers_none_on_a_cpu_and_the_spare_cores_of_each_rank_on_cuda():
    from lib.devices import AUTO_CUDA_WORKERS, loader_workers
    from lib.schema import Training
    auto = Training(device="cuda", precision="auto", world_size=1, threads=None, loader_workers="auto", seed=1)
    assert loader_workers(auto, "cpu", cores=16) == 0
    assert loader_workers(auto, "cuda", cores=16) == min(AUTO_CUDA_WORKERS, 15)
    assert loader_workers(auto, "cuda", cores=4) == 3  # one core kept for the training process
    assert loader_workers(auto.model_copy(update={"world_size": 8}), "cuda", cores=16) == 1  # 2 cores a rank
    assert loader_workers(auto.model_copy(update={"world_size": 8}), "cuda", cores=8) == 1  # at least one
    assert loader_workers(auto.model_copy(update={"loader_workers": 3}), "cpu", cores=2) == 3  # as given
    with pytest.raises(ValueError, match="loader_workers"):
        Training.model_validate({**auto.model_dump(), "loader_workers": -1})


def test_with_loader_workers_the_harness_sees_every_batch(prepared):
    """fairseq's workers only build the batches: the harness's train_step hook still counts each of them, so the
    curve (updates, tokens, losses) is the same as with batches built in the training process. The workers are
    shut down when the run ends, not left to the garbage collector (which waits 5 s for each, then kills it)."""
    curves = {}
    for workers in (0, 1):
        set_params(prepared, lambda p: p["training"].update(loader_workers=workers))
        before = set(psutil.Process().children(recursive=True))  # other tests' (a server, say) are not ours
        pretrain.main(["T1"])
        assert set(psutil.Process().children(recursive=True)) - before == set()
        curves[workers] = [{k: r[k] for k in ("updates", "tokens", "train_loss", "valid_loss")}
                           for r in read_curve("reports/curves/pretrain-T1.csv")]
        shutil.rmtree("models/pretrain/T1")
    assert curves[1] == curves[0] and len(curves[0]) >= 2


def test_linear_schedule_ends_at_its_end_lr_exactly_when_an_update_budget_is_spent(prepared):
    set_params(prepared, lambda p: p["pretrain"]["recipe"].update(lr_schedule="linear", lr=0.002, end_lr=0.0001,
                                                         warmup_updates=2))
    pretrain.main(["T1"])
    lrs = [float(r["lr"]) for r in read_curve("reports/curves/pretrain-T1.csv")]  # after updates 4, 8, 12
    # warm-up done after 2 updates: then 0.002 * (1 - spent) + 0.0001 * spent, spent = updates / 12
    assert lrs == pytest.approx([0.002 * (1 - u / 12) + 0.0001 * u / 12 for u in (4, 8, 12)], rel=1e-3)
    assert lrs[-1] == pytest.approx(0.0001, rel=1e-3)


def test_linear_schedule_of_a_time_budget_decays_with_the_seconds_spent(prepared):
    budget, peak = 8.0, 0.002
    set_params(prepared, lambda p: p["pretrain"]["recipe"].update(lr_schedule="linear", lr=peak, end_lr=0.0,
                                                         warmup_updates=2, budget={"seconds": budget, "updates": None}))
    pretrain.main(["T1"])
    curve = read_curve("reports/curves/pretrain-T1.csv")
    points = [(float(r["seconds"]), float(r["lr"])) for r in curve]
    # each point's rate is the peak scaled by the budget left (the point's seconds: validation included)
    for seconds, lr in points[:-1]:
        assert lr == pytest.approx(peak * max(0.0, 1 - seconds / budget), abs=0.15 * peak), points
    assert points[-1][1] <= 0.05 * peak, points  # ends near end_lr when the budget is spent


def test_budget_fraction_is_whichever_budget_bounds_the_run():
    from lib.schedule import budget_fraction
    assert budget_fraction(50, 0.0, max_update=100, stop_time_hours=0) == 0.5
    assert budget_fraction(10, 1800.0, max_update=0, stop_time_hours=1.0) == 0.5
    assert budget_fraction(200, 0.0, max_update=100, stop_time_hours=0) == 1.0
