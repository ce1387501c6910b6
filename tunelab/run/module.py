"""The one LightningModule every fine-tuning method runs in.

A method is its config class (`tunelab.base.schema.MethodConfig`): its hooks load the base model
when the method needs its own (`load_base`), turn it into what trains (`adapt`), give the
objective (`loss`) and save the result (`export`). Optimiser, schedule, metrics, logging and
checkpoint contents are shared here, so a method file holds only what makes it different.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from typing_extensions import override

from tunelab.base import models as tasks
from tunelab.base.schema import MethodConfig, ModelConfig, OptimConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups of the trainable weights: no weight decay on biases and norms."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]


def adamw_kernel(implementation: str, scales_loss: bool = False) -> dict[str, bool]:
    """`torch.optim.AdamW` arguments for `optim.implementation` (`default`: torch's choice).

    Args:
        implementation: `fused`, `foreach` or `default`.
        scales_loss: fp16 training with a gradient scaler and clipping on: a fused step
            unscales the gradients inside itself, too late for clipping, so `foreach` runs.
    """
    if implementation == "fused" and scales_loss:
        implementation = "foreach"
    return {implementation: True} if implementation in ("foreach", "fused") else {}


def clip_unscaled(trainer: L.Trainer, optimizer: torch.optim.Optimizer, value: float) -> bool:
    """Clip by norm where Lightning's mixed-precision plugin would refuse needlessly.

    Under `bf16-mixed` there is no gradient scaler, so gradients are never scaled, yet Lightning
    refuses to clip for any optimizer that unscales internally, such as a fused AdamW
    (Lightning issue #21435). Returns whether it clipped; otherwise Lightning clips as usual.
    """
    from lightning.pytorch.plugins.precision import MixedPrecision, Precision

    plugin = trainer.precision_plugin
    if not (value and type(plugin) is MixedPrecision and plugin.scaler is None):
        return False
    Precision.clip_grad_by_norm(plugin, optimizer, value)
    return True


class FineTuneModule(L.LightningModule):
    """Fine-tune a pretrained Hugging Face model with one method.

    Args:
        method: the validated method config (its hooks are the method's code).
        model: the `model` config group.
        optim: the `optim` config group.
        labels: class names for classification tasks, in label-id order.
        out_of_scope: the class reported apart (CLINC150's `oos`), if any.
    """

    def __init__(
        self,
        method: MethodConfig,
        model: ModelConfig,
        optim: OptimConfig,
        labels: list[str] | None = None,
        out_of_scope: str | None = None,
    ):
        super().__init__()
        self.method, self.model_cfg, self.optim_cfg = method, model, optim
        self.save_hyperparameters(
            {
                "method": method.dump(),
                "model": model.model_dump(),
                "optim": optim.model_dump(),
                "labels": labels,
                "out_of_scope": out_of_scope,
            },
            logger=False,
        )
        self.task = model.task
        tasks.gate_bitsandbytes(model.quantize is not None)
        self.oos = labels.index(out_of_scope) if labels and out_of_scope else None
        self.model = method.adapt(tasks.prepare_base(self.load_base(), model), self.task)
        # `from_pretrained` returns a model in eval mode and Lightning keeps each submodule's
        # mode, so without this dropout would stay off for the whole of training
        self.model.train()
        num_labels = len(labels or [])
        self.val_metrics = tasks.build_metrics(self.task, num_labels, "val", self.oos)
        self.test_metrics = tasks.build_metrics(self.task, num_labels, "test", self.oos)
        # Frozen base weights are rebuilt from `model.name_or_path`, so checkpoints hold only
        # what trains; loading them back is then non-strict.
        self.strict_loading = not self.saves_trainable_only

    def load_base(self) -> torch.nn.Module:
        """The pretrained model: the method's own (e.g. a teacher) or `model.name_or_path`."""
        labels = self.hparams.labels
        base = self.method.load_base(self.model_cfg, labels)
        return base if base is not None else tasks.load_pretrained(self.model_cfg, labels)

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

    def compute_loss(self, outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The method's training objective for one batch (its cross-entropy label-smoothed)."""
        if self.optim_cfg.label_smoothing:  # classification only (validated)
            outputs["loss"] = torch.nn.functional.cross_entropy(
                outputs.logits.float(),
                batch["labels"],
                label_smoothing=self.optim_cfg.label_smoothing,
            )
        return self.method.loss(outputs, batch, self.task)

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        outputs = self.model(**batch)
        loss = self.compute_loss(outputs, batch) if stage == "train" else outputs.loss
        size = batch["labels"].shape[0]
        train = stage == "train"
        self.log(  # sync_dist: under DDP the mean over all processes, as on one process
            f"{stage}/loss",
            loss,
            prog_bar=True,
            batch_size=size,
            on_epoch=not train,
            on_step=train,
            sync_dist=True,
        )
        if not train:
            metrics = self.val_metrics if stage == "val" else self.test_metrics
            tasks.update_metrics(self.task, metrics, outputs.logits, batch, self.oos)
        return loss

    def _log_epoch_metrics(self, stage: str) -> None:
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        values = tasks.compute_metrics(metrics, self.oos)
        self.log_dict(values, prog_bar=stage == "val", sync_dist=True)  # torchmetrics synced
        metrics.reset()

    @override
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._shared_step(batch, "train")
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0], batch_size=1)
        return loss

    @override
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    @override
    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    @override
    def configure_optimizers(self) -> dict[str, Any]:
        from transformers import get_scheduler

        optim = self.optim_cfg
        optimizer = torch.optim.AdamW(
            param_groups(self, optim.weight_decay),
            lr=optim.lr,
            betas=tuple(optim.betas),
            **adamw_kernel(optim.implementation, self._scales_loss_and_clips()),
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        name = "constant_with_warmup" if optim.scheduler == "constant" else optim.scheduler
        scheduler = get_scheduler(
            name,
            optimizer,
            num_warmup_steps=int(optim.warmup_ratio * total),
            num_training_steps=total,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def _scales_loss_and_clips(self) -> bool:
        plugin = self.trainer.precision_plugin
        return bool(self.trainer.gradient_clip_val) and getattr(plugin, "scaler", None) is not None

    @override
    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        if gradient_clip_algorithm in (None, "norm") and clip_unscaled(
            self.trainer, optimizer, gradient_clip_val or 0.0
        ):
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

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
        if not self.method.export(self.model, folder, self.model_cfg, self.hparams.labels):
            self.model.save_pretrained(folder)
        return folder
