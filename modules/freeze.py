"""Partial fine-tuning: only the top `trainable_layers` blocks, what is above them, the head."""

from __future__ import annotations

from typing import Any

from tunelab.base.plugin import MethodConfig, ModelProbe, TaskConfig
from tunelab.base.schema import PositiveInt


def freeze_bottom(model: Any, trainable_layers: int) -> Any:
    """Freeze the embeddings and every block below the top `trainable_layers` blocks.

    What sits above the blocks (BERT's pooler, a decoder's final norm, the task head) trains.
    """
    from modules.blocks import find_layers, is_embedding

    name, layers = find_layers(model)
    first_trained = len(layers) - trainable_layers
    frozen_blocks = {f"{name}.{i}." for i in range(first_trained)}
    for param_name, param in model.named_parameters():
        in_frozen_block = any(param_name.startswith(b) for b in frozen_blocks)
        param.requires_grad = not (in_frozen_block or is_embedding(param_name))
    return model


class FreezeMethod(MethodConfig):
    """Top-k layer fine-tuning; checkpoints keep only the trained blocks and head.

    Attributes:
        trainable_layers: how many of the top transformer blocks train.
    """

    trainable_layers: PositiveInt = 2

    def check(self, probe: ModelProbe, task: TaskConfig, problems: list[str]) -> None:
        """The model must have at least `trainable_layers` blocks."""
        if self.trainable_layers > probe.num_layers:
            problems.append(
                f"method.trainable_layers: {self.trainable_layers} but {probe.name_or_path} has "
                f"only {probe.num_layers} layers; use at most {probe.num_layers} (or method=full)"
            )

    def adapt(self, model: Any, task: TaskConfig) -> Any:
        """Freeze all but the top blocks."""
        return freeze_bottom(model, self.trainable_layers)
