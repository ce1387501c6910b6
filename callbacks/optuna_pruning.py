"""Report the sweep metric to Optuna after every validation, and prune when Optuna says so.

The step reported is the number of validations completed so far, counted from 1: with one
validation per epoch, step `k` means "after `k` epochs of training". optuna-integration's
Lightning callback reports the 0-based epoch index instead, so Hyperband's first rung
(`min_resource=1`) was only reached after two epochs and its last rung at the final epoch, where
pruning saves nothing (benchmarks/sweep_pruning.py on 2026-11-25: 88% of the unpruned steps;
see the README's sweep benchmark).
"""

from __future__ import annotations

import lightning as L
import optuna
from typing_extensions import override


def reports_per_epoch(val_check_interval: float) -> int:
    """How many validations (pruning reports) one training epoch holds.

    Args:
        val_check_interval: `trainer.val_check_interval` as a fraction of an epoch (<= 1.0).
    """
    return max(1, round(1.0 / val_check_interval))


class OptunaPruning(L.Callback):
    """Reports `monitor` to `trial` at each validation (1-based step) and raises TrialPruned.

    Args:
        trial: the running Optuna trial.
        monitor: a validation metric logged by the module, e.g. `val/acc`.
    """

    def __init__(self, trial: optuna.Trial, monitor: str):
        self.trial, self.monitor = trial, monitor
        self.reports = 0

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise KeyError(
                f"sweep.metric '{self.monitor}' was not logged at validation; logged metrics: "
                f"{sorted(trainer.callback_metrics)}"
            )
        self.reports += 1
        self.trial.report(float(value), step=self.reports)
        if self.trial.should_prune():
            raise optuna.TrialPruned(
                f"pruned after validation {self.reports} (training step {trainer.global_step})"
            )
