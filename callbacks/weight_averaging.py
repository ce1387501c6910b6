"""An exponential moving average of the weights, validated, checkpointed and tested in their place.

Lightning's `EMAWeightAveraging` keeps `avg = decay * avg + (1 - decay) * weights` after every
optimiser step (from `start_step`, when given), swaps the average in for each validation, and
saves it as the checkpoint's weights; the best checkpoint the run tests and exports therefore
holds averaged weights. Name it in a run's extra callbacks:

    python run.py experiment=freeze_minilm_banking77 \
        '+callbacks=[{_target_: callbacks.weight_averaging.EMA, decay: 0.998}]'

The average starts from the pretrained weights, so at `decay=0.999` the first few hundred steps
are dominated by them: pick `decay` so that `1 / (1 - decay)` steps is a fraction of an epoch.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging
from typing_extensions import override


class EMA(EMAWeightAveraging):
    """An exponential moving average of the weights.

    Args:
        decay: weight of the running average at each update.
        start_step: the first optimiser step averaged (None: from the first).
    """

    def __init__(self, decay: float = 0.999, start_step: int | None = None):
        super().__init__(decay=decay, update_starting_at_step=start_step)

    @override
    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning's callback puts the running (not averaged) weights back whenever a
        # checkpoint loads while it is attached: right when a training run resumes, wrong when
        # the same trainer then tests the best checkpoint, which must keep the average it holds
        if trainer.state.fn == "fit":
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
