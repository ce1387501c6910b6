"""The one shared LightningModule every fine-tuning method builds on.

A method subclass overrides `adapt` (turn the pretrained model into what trains: wrap it in a
peft adapter, freeze layers, ...) and, rarely, `compute_loss`. Everything else (optimiser,
schedule, metrics, logging, checkpoint contents, export) is shared here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from typing_extensions import override

from modules import tasks


class FineTuneModule(L.LightningModule):
    """Fine-tune a pretrained Hugging Face model with one method.

    Args:
        method: the `method` config group (name and the method's hyperparameters).
        model: the `model` config group (`name_or_path`, `task`, `max_length`, `dtype`).
        optim: the `optim` config group (`lr`, `weight_decay`, `warmup_ratio`, `scheduler`).
        labels: class names for classification tasks, in label-id order.
    """

    def __init__(
        self,
        method: dict[str, Any],
        model: dict[str, Any],
        optim: dict[str, Any],
        labels: list[str] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.task = model["task"]
        self.model = self.adapt(tasks.prepare_base(self.load_base(), model))
        num_labels = len(labels or [])
        self.val_metrics = tasks.build_metrics(self.task, num_labels, "val")
        self.test_metrics = tasks.build_metrics(self.task, num_labels, "test")
        # Frozen base weights are rebuilt from `model.name_or_path`, so checkpoints hold only
        # what trains; loading them back is then non-strict.
        self.strict_loading = not self.saves_trainable_only

    # ---------------------------------------------------------------- method hooks
    def load_base(self) -> nn.Module:
        """Load the pretrained model (methods that quantise or shrink it override this)."""
        return tasks.load_pretrained(self.hparams.model, self.hparams.labels)

    def adapt(self, model: nn.Module) -> nn.Module:
        """Turn the pretrained model into the trainable one (identity: full fine-tuning)."""
        return model

    def compute_loss(self, outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training objective (default: the model's own loss on `labels`)."""
        return outputs.loss

    # ---------------------------------------------------------------- shared logic
    @property
    def saves_trainable_only(self) -> bool:
        """Whether any weight is frozen (then checkpoints keep only trainable tensors)."""
        return any(not p.requires_grad for p in self.model.parameters())

    @property
    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameters of the model being fine-tuned."""
        return tasks.count_parameters(self.model)

    @override
    def forward(self, **batch: torch.Tensor) -> Any:
        return self.model(**batch)

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        outputs = self.model(**batch)
        loss = self.compute_loss(outputs, batch) if stage == "train" else outputs.loss
        size = batch["labels"].shape[0]
        self.log(
            f"{stage}/loss",
            loss,
            prog_bar=True,
            batch_size=size,
            on_epoch=True,
            on_step=stage == "train",
        )
        if stage != "train":
            metrics = self.val_metrics if stage == "val" else self.test_metrics
            tasks.update_metrics(self.task, metrics, outputs.logits, batch)
            self.log_dict(metrics, prog_bar=stage == "val", batch_size=size)
        return loss

    @override
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._shared_step(batch, "train")
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0], batch_size=1)
        return loss

    @override
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    @override
    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    @override
    def configure_optimizers(self) -> dict[str, Any]:
        from transformers import get_scheduler

        optim = self.hparams.optim
        trainable = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        groups = [  # no weight decay on biases and norms
            {
                "params": [p for _, p in trainable if p.ndim >= 2],
                "weight_decay": optim["weight_decay"],
            },
            {"params": [p for _, p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=optim["lr"], betas=tuple(optim["betas"]))
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        name = "constant_with_warmup" if optim["scheduler"] == "constant" else optim["scheduler"]
        scheduler = get_scheduler(
            name,
            optimizer,
            num_warmup_steps=int(optim["warmup_ratio"] * total),
            num_training_steps=total,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.saves_trainable_only:
            keep = {name for name, p in self.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {
                k: v for k, v in checkpoint["state_dict"].items() if k in keep
            }

    def export(self, folder: str | Path) -> Path:
        """Save the fine-tuned model (PEFT: adapter + trained head) in Hugging Face format."""
        folder = Path(folder)
        self.model.save_pretrained(folder)
        return folder
