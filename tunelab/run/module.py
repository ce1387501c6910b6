"""The one LightningModule every fine-tuning method runs in.

A method is its config class (`tunelab.base.plugin.MethodConfig`): its hooks load the base model
when the method needs its own (`load_base`), turn it into what trains (`adapt`), give the
objective (`loss`) and save the result (`export`). The task (`tunelab.base.plugin.TaskConfig`)
says which Auto class loads the model, its default loss and its metrics. Optimiser, schedule,
logging and checkpoint contents are shared here, so a plug-in holds only what makes it different.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torchmetrics import MetricCollection
from typing_extensions import override

from tunelab.base import models
from tunelab.base.plugin import Labels, MethodConfig, TaskConfig
from tunelab.base.schema import ModelConfig, OptimConfig
from tunelab.run.schedule import planned_steps


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
    """Fine-tune a pretrained Hugging Face model for one task with one method.

    Args:
        task: the validated task config (its hooks: loading arguments, loss, metrics).
        method: the validated method config (its hooks are the method's code).
        model: the `model` config group.
        optim: the `optim` config group.
        labels: the class names (classification), or None.
    """

    def __init__(
        self,
        task: TaskConfig,
        method: MethodConfig,
        model: ModelConfig,
        optim: OptimConfig,
        labels: Labels | None = None,
    ):
        super().__init__()
        self.task, self.method, self.model_cfg, self.optim_cfg = task, method, model, optim
        self.labels = labels
        self.save_hyperparameters(  # plain data: checkpoints load with weights_only=True
            {
                "task": task.dump(),
                "method": method.dump(),
                "model": model.model_dump(),
                "optim": optim.model_dump(mode="json"),
                "labels": labels.model_dump() if labels else None,
            },
            logger=False,
        )
        models.gate_bitsandbytes(model.quantize is not None)
        self.model = task.adapt(models.prepare_base(self.load_base(), model), method)
        # `from_pretrained` returns a model in eval mode and Lightning keeps each submodule's
        # mode, so without this dropout would stay off for the whole of training
        self.model.train()
        self.val_metrics = MetricCollection(task.metrics(labels), prefix="val/")
        self.test_metrics = MetricCollection(task.metrics(labels), prefix="test/")
        # Frozen base weights are rebuilt from `model.name_or_path`, so checkpoints hold only
        # what trains; loading them back is then non-strict.
        self.strict_loading = not self.saves_trainable_only
        self.prepared = False  # `method.prepare` ran (see `setup`)
        # what else travels with the exported model, by name: functions writing into its folder
        # (an out-of-scope detector fitted after testing: callbacks.out_of_scope)
        self.extra_exports: dict[str, Any] = {}

    def load_base(self) -> torch.nn.Module:
        """The pretrained model: the method's own (e.g. a teacher) or `model.name_or_path`."""
        names = self.labels.names if self.labels else None
        base = self.method.load_base(self.model_cfg, self.task, names)
        return (
            base if base is not None else models.load_pretrained(self.model_cfg, self.task, names)
        )

    @property
    def saves_trainable_only(self) -> bool:
        """Whether any weight is frozen (then checkpoints keep only trainable tensors)."""
        return any(not p.requires_grad for p in self.model.parameters())

    @property
    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameters of the model being fine-tuned."""
        return models.count_parameters(self.model)

    @override
    def setup(self, stage: str) -> None:
        # the method's `prepare` (pruning) sees the training data once, before the optimiser
        # is made and before a resumed run's checkpoint is loaded into the reshaped model
        if stage == "fit" and not self.prepared:
            self.model = self.method.prepare(self.model, self.trainer.datamodule, self.task)
            self.prepared = True

    @override
    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        if not self.prepared:  # a checkpoint of a model `prepare` reshaped: take its shapes
            own = {k.removeprefix("model."): v for k, v in state_dict.items()}
            self.model = self.method.reshape(self.model, own)
            self.prepared = True
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @override
    def forward(self, **batch: torch.Tensor) -> Any:
        return self.model(**batch)

    def compute_loss(self, outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The method's training objective for one batch (by default the task's loss)."""
        return self.method.loss(outputs, batch, self.task)

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        outputs = self.task.forward(self.model, batch)
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
        if train:
            logs = {f"train/{k}": v for k, v in self.task.step_logs(outputs).items()}
            self.log_dict(logs, batch_size=size, on_step=True, on_epoch=False, sync_dist=True)
        else:
            metrics = self.val_metrics if stage == "val" else self.test_metrics
            metrics.update(*self.task.metric_inputs(outputs, batch))
        return loss

    def _log_epoch_metrics(self, stage: str) -> None:
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        self.log_dict(
            metrics.compute(), prog_bar=stage == "val", sync_dist=True
        )  # torchmetrics synced
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

        from tunelab.run.layer_decay import decayed_groups

        optim = self.optim_cfg
        groups = (
            decayed_groups(self.model, optim.weight_decay, optim.lr, optim.layer_decay)
            if optim.layer_decay < 1
            else param_groups(self, optim.weight_decay)
        )
        optimizer = torch.optim.AdamW(
            groups,
            lr=optim.lr,
            betas=tuple(optim.betas),
            **adamw_kernel(optim.implementation, self._scales_loss_and_clips()),
        )
        total = planned_steps(self.trainer)  # not `estimated_stepping_batches`: see schedule
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
        names = self.labels.names if self.labels else None
        if not self.method.export(self.model, folder, self.model_cfg, names):
            self.model.save_pretrained(folder)
        self.write_extras(folder)
        return folder

    def write_extras(self, folder: Path) -> None:
        """Write what travels beside the model (`extra_exports`) into an export folder."""
        for write in self.extra_exports.values():
            write(folder)
