"""How many optimiser steps a run's learning-rate schedule spans.

`Trainer.estimated_stepping_batches` would give the same number, but it builds the trainer's
training loader to count its batches, and when `configure_optimizers` asks (before a resumed
run's checkpoint is loaded) that loader is the one training then uses: Lightning restores the
loader's saved position (`state_dict` of `datamodules.resumable.ResumableLoader`) only into a
loader it builds after loading the checkpoint. Counting the datamodule's own loader leaves the
trainer's to be built at the right time, so resuming needs no private Lightning call.
"""

from __future__ import annotations

import math
from typing import Any


def batches_per_epoch(length: int, limit: int | float) -> int:
    """The training batches one epoch runs: `length` cut by `trainer.limit_train_batches`.

    An int limit is a number of batches, a float a fraction of the loader (as Lightning reads
    it).
    """
    if isinstance(limit, int):
        return min(length, limit)
    return int(length * limit)


def planned_steps(trainer: Any) -> int:
    """The optimiser steps of the whole run (at least 1), as Lightning would estimate them.

    `max_steps` when training is not bounded by epochs or the loader has no length; else the
    epochs' steps (batches per epoch over gradient accumulation, rounded up), capped by
    `max_steps` when set.
    """
    if trainer.max_epochs == -1:
        return max(trainer.max_steps, 1)
    if trainer.datamodule is None:  # loaders given to `fit` directly: nothing to resume into
        return max(int(trainer.estimated_stepping_batches), 1)
    loader = trainer.datamodule.train_dataloader()
    try:
        length = len(loader)
    except TypeError:  # an iterable dataset: only `max_steps` bounds the run
        return max(trainer.max_steps, 1)
    batches = batches_per_epoch(length, trainer.limit_train_batches)
    steps = math.ceil(batches / trainer.accumulate_grad_batches) * max(trainer.max_epochs or 1, 1)
    if trainer.max_steps != -1:
        steps = min(steps, trainer.max_steps)
    return max(steps, 1)
