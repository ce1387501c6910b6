"""The task table: everything that depends on what the base model predicts, in one place.

A task is `sequence_classification` (encoder + head: accuracy, macro-F1) or `causal_lm` (decoder,
loss on response tokens, perplexity). Code asks `TASKS[name]` instead of comparing task names.
Classes are named by dotted path and imported where they are used, so this table is light.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """How one task is trained, checkpointed, measured and exported.

    Attributes:
        name: the `model.task` value.
        auto_model: the transformers Auto class that loads the base model.
        peft_task_type: peft's `TaskType` name (it decides what peft saves with an adapter).
        monitor: the validation metric that picks the best checkpoint.
        mode: `max` or `min` for `monitor`.
        metrics: torchmetrics built for validation and test (see `tunelab.base.models.METRICS`).
        callbacks: default extra callbacks (dotted class paths); `callbacks:` in the config
            replaces them.
        export_kind: what an export holds: `classifier` (label + probability) or `generator`.
        has_labels: whether the data defines a class list (a classification head).
    """

    name: str
    auto_model: str
    peft_task_type: str
    monitor: str
    mode: str
    metrics: tuple[str, ...]
    callbacks: tuple[str, ...]
    export_kind: str
    has_labels: bool


TASKS: dict[str, Task] = {
    "sequence_classification": Task(
        name="sequence_classification",
        auto_model="transformers.AutoModelForSequenceClassification",
        peft_task_type="SEQ_CLS",
        monitor="val/acc",
        mode="max",
        metrics=("acc", "f1"),
        callbacks=(
            "callbacks.first_step.TimeToFirstStep",
            "callbacks.classification_report.ClassificationReport",
        ),
        export_kind="classifier",
        has_labels=True,
    ),
    "causal_lm": Task(
        name="causal_lm",
        auto_model="transformers.AutoModelForCausalLM",
        peft_task_type="CAUSAL_LM",
        monitor="val/loss",
        mode="min",
        metrics=("ppl",),
        callbacks=(
            "callbacks.first_step.TimeToFirstStep",
            "callbacks.generation.GenerationCallback",
            "callbacks.mask_preview.MaskPreviewCallback",
            "callbacks.generation_eval.GenerationEval",
            "callbacks.option_scoring.OptionScoring",
        ),
        export_kind="generator",
        has_labels=False,
    ),
}
