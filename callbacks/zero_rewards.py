"""Stop a preference run whose rewards stay exactly 0: it would train nothing, silently.

The commonest complaint about DPO (trl #1311, #1627, #4023) is a loss stuck at 0.6931 with
rewards of 0: the policy never moves away from its reference. This callback reads the training
batch's `train/rewards/chosen` and `train/rewards/rejected` (logged by the preference task) once
the policy has taken `after_steps` optimiser steps, and stops the run with the likely cause.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from typing_extensions import override

from tunelab.base.errors import TunelabError

KEYS = ("train/rewards/chosen", "train/rewards/rejected")


class ZeroRewardsError(TunelabError):
    """The rewards stayed exactly 0 after the first optimiser steps."""


class ZeroRewardGuard(L.Callback):
    """Raise `ZeroRewardsError` when the rewards are exactly 0 after `after_steps` steps.

    Args:
        after_steps: optimiser steps the policy takes before it is checked (the first step of a
            warm-up runs at learning rate 0).
    """

    def __init__(self, after_steps: int = 3):
        self.after_steps = after_steps
        self.checked = False
        self._steps_before = 0

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._steps_before = trainer.global_step

    @override
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.checked or self._steps_before < self.after_steps:
            return
        self.checked = True  # once: a resumed run past this point is checked on its first batch
        values = [trainer.callback_metrics.get(key) for key in KEYS]
        if any(v is None or float(v) != 0.0 for v in values):
            return
        raise ZeroRewardsError(zero_rewards_message(pl_module, self._steps_before))


def zero_rewards_message(pl_module: Any, steps: int) -> str:
    """What the stuck rewards mean, with the likely cause first."""
    trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
    task = pl_module.hparams.get("task", {})
    lr = pl_module.hparams.get("optim", {}).get("lr")
    head = (
        f"the rewards are exactly 0 after {steps} optimiser steps (loss stuck at ln 2 = 0.6931): "
        "the policy has not moved away from its reference, so preference tuning trains nothing."
    )
    if trainable == 0:
        return f"{head} No weight is trainable. Fix: a method that trains (method=lora, ...)"
    return (
        f"{head} Likely causes: the reference is the policy itself (task.reference_adapter "
        "names the adapter being trained?), task.beta too small (now "
        f"{task.get('beta')}), or optim.lr too small for the weights to change (now {lr}). "
        "Fix the one that applies and rerun"
    )
