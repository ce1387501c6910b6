"""Precompute the reference's log-probabilities once, before training, then free the reference.

With `task.precompute_reference=true` (DPO, IPO, KTO), every row of every split is
scored by the reference once, at the start of fit (also of a resumed fit: the reference never
trains, so the numbers are the same); the columns `ref_chosen` and `ref_rejected` (a batch's
first and second half: chosen and rejected, or KTO's completion and its mismatched one) then
travel in the batches and the task uses them instead of a reference forward pass. A frozen
reference copy (full fine-tuning) or the frozen SFT adapter is released afterwards; with a new
PEFT adapter the reference is the base itself, so only its forward passes are saved.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from typing_extensions import override

COLUMNS = ("ref_chosen", "ref_rejected")


def reference_columns(pl_module: Any, loader: Any) -> tuple[list[float], list[float]]:
    """The reference's summed log-probabilities of each pair's chosen and rejected response."""
    from tasks.preference_losses import sequence_logps

    chosen: list[float] = []
    rejected: list[float] = []
    task, model = pl_module.task, pl_module.model
    with torch.no_grad(), task.reference(model) as reference:
        for batch in loader:
            batch = {k: v.to(pl_module.device) for k, v in batch.items() if torch.is_tensor(v)}
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
            logits = reference(**inputs, use_cache=False).logits
            first, second = sequence_logps(logits, batch["labels"]).halves()
            chosen += first.double().tolist()
            rejected += second.double().tolist()
    return chosen, rejected


class ReferenceLogps(L.Callback):
    """Score every split with the reference at fit start when the task asks for it."""

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        task, datamodule = pl_module.task, trainer.datamodule
        if not getattr(task, "precompute_reference", False) or datamodule is None:
            return
        was_training = pl_module.model.training
        pl_module.model.eval()
        for split in list(datamodule.splits):
            rows = datamodule.splits[split]
            rows = rows.remove_columns([c for c in COLUMNS if c in rows.column_names])
            datamodule.splits[split] = rows  # scored without the columns, in file order
            chosen, rejected = reference_columns(pl_module, datamodule.ordered_loader(split))
            rows = rows.add_column("ref_chosen", chosen).add_column("ref_rejected", rejected)
            datamodule.splits[split] = rows
        pl_module.model.train(was_training)
        task.release_reference(pl_module.model)
