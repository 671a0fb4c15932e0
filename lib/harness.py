"""Budgeted fairseq training: fairseq-train until the budget (updates or seconds) is spent, resumable,
with the learning curve (tokens, FLOPs, lr, losses, BLEU) written at every validation point."""
import contextlib
import csv
import json
import math
import os
import shutil
import time
from pathlib import Path

from lib.checkpoints import UnsafeCheckpoint, checkpoint_updates, export_checkpoint, load_checkpoint
from lib.devices import cpu_autocast, distributed_master, distributed_rank, trained_on, trained_precision
from lib.errors import StageError, in_context_chain, log, summary as log_summary
from lib.fairseq_cli import run_fairseq
from lib.files import naming_disk_full, write_json
from lib.progress import Progress, training_facts


WORK_DIR = Path("models/.work")   # resumable training state; not a DVC output (DVC deletes those)


CURVE_FIELDS = ["updates", "seconds", "tokens", "flops", "lr", "train_loss", "valid_loss", "valid_ppl",
                "valid_accuracy", "valid_bleu"]


def run_fingerprint(args: list) -> str:
    """What identifies a training run, to tell whether an interrupted one may be resumed: its flags."""
    return json.dumps([str(a) for a in args if not str(a).startswith("--stop-time-hours")])


def train_with_budget(label: str, work: Path, args: list, curve_path: Path, flops_of_sample,
                      on_model=None) -> dict:
    """Run fairseq-train with `args` (which include the budget) in `work`, resuming from its last
    checkpoint when an earlier run of the same configuration was interrupted. Writes the learning
    curve to `curve_path` (one row per validation point) and returns the last row.

    flops_of_sample(sample) -> (tokens, flops) estimates the training cost of one batch;
    on_model(model), when given, is called once with the built model before its first update."""
    import torch
    from lib import schedule  # registers --lr-scheduler budget_linear

    work_curve, master = work / "curve.csv", distributed_rank() == 0
    rows = []
    if master:  # the other ranks wait for it in fairseq's process-group set-up
        fingerprint = run_fingerprint(args)
        fingerprint_file = work / "fingerprint.json"
        if work.exists() and (not fingerprint_file.exists() or fingerprint_file.read_text() != fingerprint):
            log(f"{label}: configuration changed since the interrupted run in {work}; starting over")
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        fingerprint_file.write_text(fingerprint)
        repair_checkpoints(work, label)
        rows = resume_curve(work_curve, work / "checkpoint_last.pt")
    if rows:
        log(f"{label}: resuming at update {rows[-1]['updates']} ({float(rows[-1]['seconds']):.0f} s spent)")
    # the console's bar over the budget (rank 0's)
    progress = Progress(label, args, *((int(rows[-1]["updates"]), float(rows[-1]["seconds"])) if rows else ())) \
        if master else None
    # tokens and FLOPs: totals on the curve, plus what this rank trained on since the last point
    state = {"tokens": int(rows[-1]["tokens"]) if rows else 0, "flops": float(rows[-1]["flops"]) if rows else 0.0,
             "new_tokens": 0, "new_flops": 0.0, "loss_sum": 0.0, "loss_n": 0}
    args, cpu_bf16 = cpu_autocast(args)

    def train_step(original_train_step, self, samples):
        if not state.get("started"):  # this process's first update
            state["started"], state["task"] = True, self.task
            if self.get_num_updates() > 0:
                # resumed: fairseq's clock has run since it loaded the checkpoint, but this process's
                # start-up is not training (the killed run counted its own), and a late kill would
                # spend the rest of the budget on it before the first update could check the budget
                self._start_time = time.time()
            if isinstance(self.lr_scheduler, schedule.BudgetLinearSchedule):
                # the budget's clock: training seconds, restored from the checkpoint when resumed
                self.lr_scheduler.elapsed = lambda: float(self.cumulative_training_time())
            if on_model is not None:
                on_model(self.get_model())
        try:  # raise_oom: a batch that does not fit fails the run instead of being skipped silently
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16):
                out = original_train_step(self, samples, raise_oom=True)
        except Exception as e:
            cause = in_context_chain(e, FloatingPointError)
            if cause is not None and cause is not e:  # fairseq's NaN diagnostics can crash themselves
                raise cause from e
            raise
        step_tokens = 0
        for sample in samples:
            if sample and "net_input" in sample:
                tokens, flops = flops_of_sample(sample)
                step_tokens += tokens
                state["new_flops"] += flops
        state["new_tokens"] += step_tokens
        if out and "loss" in out:
            state["loss_sum"] += float(out["loss"])
            state["loss_n"] += 1
        if progress is not None:  # this rank's clock: no collective call on one rank only
            progress.update(self.get_num_updates(), self._local_cumulative_training_time(),
                            float(out["loss"]) if out and "loss" in out else None, step_tokens)
        return out

    def get_valid_stats(original_valid_stats, cfg, trainer, stats, tracking_best):
        stats = original_valid_stats(cfg, trainer, stats, tracking_best)
        if not tracking_best:  # the first valid subset only, once per point
            return stats
        new = [state["new_tokens"], state["new_flops"]]
        if trainer.data_parallel_world_size > 1:  # every rank validates: sum what all ranks trained on
            new = torch.tensor(new, dtype=torch.float64)
            torch.distributed.all_reduce(new)
            new = [int(new[0]), float(new[1])]
        state["tokens"] += new[0]
        state["flops"] += new[1]
        state["new_tokens"], state["new_flops"] = 0, 0.0
        if distributed_master(cfg):
            seconds = float(trainer.cumulative_training_time())  # a tensor when there are several ranks
            row = {"updates": trainer.get_num_updates(), "seconds": round(seconds, 2),
                   "tokens": state["tokens"], "flops": f"{state['flops']:.4g}", "lr": f"{trainer.get_lr():.4g}",
                   "train_loss": round(state["loss_sum"] / state["loss_n"], 4) if state["loss_n"] else "",
                   "valid_loss": stats.get("loss", ""), "valid_ppl": stats.get("ppl", ""),
                   "valid_accuracy": stats.get("accuracy", ""),
                   # fairseq logs no BLEU while every hypothesis is empty: that is a BLEU of 0
                   "valid_bleu": stats.get("bleu", 0.0 if getattr(cfg.task, "eval_bleu", False) else "")}
            state["loss_sum"], state["loss_n"] = 0.0, 0
            rows.append(row)
            write_curve(work_curve, rows)
            log(f"{label}: update {row['updates']}, {row['seconds']:.0f} s, valid loss {row['valid_loss']}",
                console=False)  # the progress bar shows it
            if progress is not None:
                progress.valid(row["valid_loss"])
        if not math.isfinite(float(stats.get("loss") or 0)):  # on every rank: the stats are all-reduced
            raise FloatingPointError(f"validation loss is {stats.get('loss')}")
        return stats

    try:
        with fairseq_hooks(train_step, get_valid_stats), naming_disk_full(work):
            run_fairseq("train", [*args, "--save-dir", work])
    except FloatingPointError as e:
        done = rows[-1]["updates"] if rows else 0
        raise StageError(f"{label}: loss became NaN/inf after update {done} ({e}). The last good checkpoint is "
                         f"kept in {work}/checkpoint_last.pt; lower the learning rate or use fp32/bf16.")
    except (RuntimeError, MemoryError) as e:
        if not isinstance(e, (torch.OutOfMemoryError, MemoryError)) and not any(
                m in str(e) for m in ("out of memory", "can't allocate memory")):
            raise
        raise StageError(f"{label}: does not fit in memory ({str(e).splitlines()[0]}). "
                         "Lower max_tokens (the batch size in tokens) for this stage in params.yaml.")
    finally:
        close_loaders(state.get("task"))
        if progress is not None:
            progress.close()
    if not master:
        return {}
    if not rows:
        raise StageError(f"{label}: training ended before its first validation point; raise the budget")
    curve_path.parent.mkdir(parents=True, exist_ok=True)
    write_curve(curve_path, rows)
    return rows[-1]


def close_loaders(task) -> None:
    """Shut down the loader workers of fairseq's batch iterators (the task caches them) while they are still
    reachable. fairseq leaves them to the garbage collector, which collects them in a cycle with their queues:
    the queues close first, and torch then waits 5 s for each persistent worker before killing it (10 s a run
    with loader workers, paid by whatever runs next in this process)."""
    for epoch_itr in getattr(task, "dataset_to_epoch_iter", {}).values():
        iterator = getattr(getattr(epoch_itr, "dataloader", None), "_iterator", None)
        if hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


@contextlib.contextmanager
def fairseq_hooks(train_step, get_valid_stats):
    """fairseq-train with the harness's hooks, restored on exit: every Trainer.train_step goes through
    `train_step(original, trainer, samples)` (raise_oom set: a batch that does not fit fails the run
    instead of being skipped silently), every validation's stats through `get_valid_stats(original, cfg,
    trainer, stats, tracking_best)`; and --bf16 no longer implies --tpu (torch_xla): it means bfloat16 on
    the GPU, or the harness's CPU autocast. fairseq's process-wide best validation score is reset, so a
    second run in one process (tests) does not compare against the first run's best (a resumed run
    restores its own). masked_lm's batches are built a batch at a time (lib/masked_lm_batches.py).
    sentence_prediction's examples are ordered by length (shuffled among equal lengths),
    as masked_lm and translation already order theirs: fairseq's own order is shuffle only, so a batch of
    32 random GLUE sentences is padded to its longest (seen on SST-2: 3.1 tokens computed per real token).
    The batches are still shuffled every epoch."""
    from fairseq import checkpoint_utils
    from fairseq import trainer as fairseq_trainer
    from fairseq.data import SortDataset
    from fairseq.tasks.sentence_prediction import SentencePredictionTask
    import fairseq_cli.train as train_cli
    from lib.masked_lm_batches import batched_masking  # imports fairseq: here, after the stage's logging is set up

    original_train_step = fairseq_trainer.Trainer.train_step
    original_valid_stats = train_cli.get_valid_stats
    original_parse = train_cli.options.parse_args_and_arch
    original_load_dataset = SentencePredictionTask.load_dataset

    def load_dataset(self, split, *args, **kwargs):
        dataset = original_load_dataset(self, split, *args, **kwargs)
        if isinstance(dataset, SortDataset):  # [shuffle] -> by length, then shuffle (np.lexsort: last key first)
            self.datasets[split] = dataset = SortDataset(
                dataset.dataset, sort_order=[*dataset.sort_order, dataset.dataset.sizes[0]])
        return dataset

    def parse_args_and_arch(*args, **kwargs):
        parsed = original_parse(*args, **kwargs)
        parsed.tpu = False
        return parsed

    fairseq_trainer.Trainer.train_step = \
        lambda self, samples, raise_oom=False: train_step(original_train_step, self, samples)
    train_cli.get_valid_stats = lambda *a: get_valid_stats(original_valid_stats, *a)
    train_cli.options.parse_args_and_arch = parse_args_and_arch
    SentencePredictionTask.load_dataset = load_dataset
    if hasattr(checkpoint_utils.save_checkpoint, "best"):
        del checkpoint_utils.save_checkpoint.best
    try:
        with batched_masking():
            yield
    finally:
        fairseq_trainer.Trainer.train_step = original_train_step
        train_cli.get_valid_stats = original_valid_stats
        train_cli.options.parse_args_and_arch = original_parse
        SentencePredictionTask.load_dataset = original_load_dataset


def train_and_export(stage: str, name: str, out: Path, args: list, flops_of_sample, keep: str,
                     summary: dict, more_facts=lambda last: []) -> dict:
    """What every training stage does: train `name` under its budget (resumable, in
    models/.work/<stage>/<name>), write its curve to reports/curves/<stage>-<name>.csv, export
    checkpoint_<keep>.pt (last or best) to out/checkpoint.pt with out/summary.json, drop the scratch,
    and end with the stage's summary line (lib.progress.training_facts, then more_facts(last row))."""
    label, work, curve = f"{stage} {name}", WORK_DIR / stage / name, Path("reports/curves") / f"{stage}-{name}.csv"
    last = train_with_budget(label, work, args, curve, flops_of_sample)
    if distributed_rank() != 0:  # rank 0 writes the outputs
        return last
    parameters = export_checkpoint(work / f"checkpoint_{keep}.pt", out / "checkpoint.pt")
    write_json(out / "summary.json", {**summary, "parameters": parameters, "final": last,
                                      "precision": trained_precision(args), "hardware": trained_on(args)})
    shutil.rmtree(work)
    with open(curve) as f:
        rows = list(csv.DictReader(f))
    log_summary(label, *training_facts(rows, keep), *more_facts(last))
    return last


def write_curve(path: Path, rows: list) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, CURVE_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def resume_curve(curve: Path, checkpoint: Path) -> list:
    """Curve rows of an interrupted run, cut back to its last checkpoint (rows after it are redone)."""
    if not (curve.exists() and checkpoint.exists()):
        return []
    updates = checkpoint_updates(checkpoint)
    with open(curve) as f:
        return [row for row in csv.DictReader(f) if int(row["updates"]) <= updates]


def repair_checkpoints(work: Path, label: str) -> None:
    """fairseq writes checkpoint_<epoch>_<updates>.pt atomically, then copies it to checkpoint_best.pt
    and checkpoint_last.pt, not atomically: a kill during a copy leaves a truncated file. Replace a
    truncated last with the newest intact interval checkpoint; drop a truncated best (fairseq writes
    it again at the next improvement over the best score recorded in last)."""
    def readable(path):
        try:
            load_checkpoint(path, mmap=True)
            return True
        except UnsafeCheckpoint:  # not truncated: neither resumed from nor dropped silently
            raise
        except Exception:
            return False

    last, best = work / "checkpoint_last.pt", work / "checkpoint_best.pt"
    if last.exists() and not readable(last):
        intervals = sorted(work.glob("checkpoint_*_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[1]), reverse=True)
        intact = next((p for p in intervals if readable(p)), None)
        if intact is None:
            log(f"{label}: {last} is truncated and no intact checkpoint is left; starting over")
            last.unlink()
        else:
            log(f"{label}: {last} is truncated (killed while copying); resuming from {intact.name}")
            shutil.copy(intact, last.with_suffix(".tmp"))
            os.replace(last.with_suffix(".tmp"), last)
    if best.exists() and not readable(best):
        log(f"{label}: dropping truncated {best}")
        best.unlink()
