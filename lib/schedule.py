"""The learning-rate schedule of a budgeted run: linear warm-up, then linear decay that reaches its end
learning rate exactly when the budget is spent.

RoBERTa's recipe decays linearly over a known number of updates (fairseq's polynomial_decay). A wall-clock
budget cannot know its update count in advance, so here the decay follows the fraction of the budget spent:
updates / max_update for an update budget (then this is polynomial_decay with power 1), training seconds /
budget seconds for a time budget. fairseq has no time-based scheduler; this registers one, `budget_linear`,
which fairseq-train selects with `--lr-scheduler budget_linear` once this module is imported. The training
harness (lib/harness.py, train_with_budget) points `elapsed` at the trainer's clock, the one `--stop-time-hours` reads.
"""
from dataclasses import dataclass, field
from typing import List

from fairseq.dataclass import FairseqDataclass
from fairseq.optim.lr_scheduler import FairseqLRScheduler, register_lr_scheduler
from omegaconf import II


@dataclass
class BudgetLinearConfig(FairseqDataclass):
    warmup_updates: int = field(default=0, metadata={"help": "warm up linearly over the first N updates"})
    end_learning_rate: float = field(default=0.0, metadata={"help": "learning rate when the budget is spent"})
    lr: List[float] = II("optimization.lr")
    max_update: int = II("optimization.max_update")
    stop_time_hours: float = II("optimization.stop_time_hours")


def budget_fraction(num_updates: int, seconds: float, max_update: int, stop_time_hours: float) -> float:
    """How much of the budget is spent, in [0, 1]: updates or training seconds, whichever bounds the run."""
    spent = [num_updates / max_update] if max_update > 0 else []
    if stop_time_hours > 0:
        spent.append(seconds / (stop_time_hours * 3600))
    return min(1.0, max(spent, default=0.0))


@register_lr_scheduler("budget_linear", dataclass=BudgetLinearConfig)
class BudgetLinearSchedule(FairseqLRScheduler):
    def __init__(self, cfg: BudgetLinearConfig, optimizer):
        super().__init__(cfg, optimizer)
        if cfg.max_update <= 0 and cfg.stop_time_hours <= 0:
            raise ValueError("--lr-scheduler budget_linear needs a budget: --max-update or --stop-time-hours")
        self.peak = cfg.lr[0]
        self.elapsed = lambda: 0.0  # training seconds so far: the harness sets the trainer's clock
        self.optimizer.set_lr(self.lr_at(0))

    def lr_at(self, num_updates: int) -> float:
        cfg = self.cfg
        # the rate set after update n is the one update n + 1 uses
        warm = min(1.0, (num_updates + 1) / cfg.warmup_updates) if cfg.warmup_updates > 0 else 1.0
        spent = budget_fraction(num_updates, self.elapsed(), cfg.max_update, cfg.stop_time_hours)
        return warm * self.peak * (1 - spent) + cfg.end_learning_rate * spent

    def step_begin_epoch(self, epoch):
        return self.optimizer.get_lr()

    def step(self, epoch, val_loss=None):
        super().step(epoch, val_loss)
        return self.optimizer.get_lr()

    def step_update(self, num_updates):
        self.optimizer.set_lr(self.lr_at(num_updates))
        return self.optimizer.get_lr()
