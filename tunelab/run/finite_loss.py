"""Stop training with a clear error the moment the loss stops being a finite number."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from typing_extensions import override

from tunelab.base.errors import NonFiniteLossError


class FiniteLossGuard(L.Callback):
    """Raise `NonFiniteLossError` on a NaN/inf training loss, naming the step and the fixes.

    Checkpoints already written (the best one so far) stay on disk and are named in the error.
    """

    @override
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None or torch.isfinite(loss).all():
            return
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or "none yet"
        lr = pl_module.hparams.get("optim", {}).get("lr")
        raise NonFiniteLossError(
            f"train/loss became {loss.item()} at step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}). Fix: lower optim.lr (now {lr}), keep "
            "trainer.gradient_clip_val > 0, or use trainer.precision=32-true. "
            f"Best checkpoint so far: {best}"
        )
