"""Task-specific pieces shared by every method, as plain functions.

A task is what the base model predicts: `sequence_classification` (encoder + head, accuracy and
macro-F1) or `causal_lm` (decoder, loss on response tokens, perplexity). Methods never depend on
the task; the shared base module asks these functions instead.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from torchmetrics.text import Perplexity

from tunelab.errors import ModelLoadError

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PEFT_TASK_TYPES = {"sequence_classification": "SEQ_CLS", "causal_lm": "CAUSAL_LM"}
# The metric a checkpoint is chosen by, and whether higher is better.
MONITOR = {"sequence_classification": ("val/acc", "max"), "causal_lm": ("val/loss", "min")}


def load_pretrained(
    model_cfg: dict[str, Any], labels: list[str] | None = None, **extra: Any
) -> nn.Module:
    """Load the pretrained base model named by `model.name_or_path` for its task.

    Args:
        model_cfg: the `model` config group.
        labels: class names, for classification heads (id -> name is saved in the config).
        **extra: passed to `from_pretrained` (e.g. `quantization_config`).

    Raises:
        ModelLoadError: when the folder or hub id cannot be loaded, with the fix.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {"dtype": TORCH_DTYPES[model_cfg.get("dtype", "float32")], **extra}
    if model_cfg["task"] == "sequence_classification":
        auto = AutoModelForSequenceClassification
        kwargs |= {
            "num_labels": len(labels or []),
            "id2label": dict(enumerate(labels or [])),
            "label2id": {name: i for i, name in enumerate(labels or [])},
        }
    else:
        auto = AutoModelForCausalLM
    path = model_cfg["name_or_path"]
    try:
        return auto.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot load model.name_or_path='{path}': {str(err).splitlines()[0]}\n"
            "Fix: point model.name_or_path at a local folder holding config.json and weights, "
            "or at a Hugging Face Hub id reachable from this machine (offline: HF_HUB_OFFLINE=1 "
            "uses only the local cache)."
        ) from err


def prepare_base(base: nn.Module, model_cfg: dict[str, Any]) -> nn.Module:
    """Switch on gradient checkpointing (`model.gradient_checkpointing`) after loading.

    Non-reentrant checkpointing works with frozen inputs (LoRA, QLoRA) without extra hooks.
    """
    if model_cfg.get("gradient_checkpointing"):
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return base


def build_metrics(task: str, num_labels: int, stage: str) -> MetricCollection:
    """The torchmetrics collection logged at the end of each `stage` epoch (`val`, `test`)."""
    if task == "sequence_classification":
        metrics = {
            "acc": MulticlassAccuracy(num_classes=num_labels, average="micro"),
            "f1": MulticlassF1Score(num_classes=num_labels, average="macro"),
        }
    else:
        metrics = {"ppl": Perplexity(ignore_index=-100)}
    return MetricCollection(metrics, prefix=f"{stage}/")


def update_metrics(task: str, metrics: MetricCollection, logits: torch.Tensor, batch: dict) -> None:
    """Feed one batch's predictions to the stage's metrics."""
    labels = batch["labels"]
    if task == "sequence_classification":
        metrics.update(logits.argmax(dim=-1), labels)
    else:  # next-token prediction: logits at t predict label t+1
        metrics.update(logits[:, :-1].float(), labels[:, 1:])


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit packed weights count as their real size."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
