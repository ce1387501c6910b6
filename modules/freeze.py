"""Partial fine-tuning: only the top `method.trainable_layers` blocks and the head train."""

from __future__ import annotations

from torch import nn
from typing_extensions import override

from modules.base import FineTuneModule
from modules.blocks import find_layers, is_embedding
from tunelab.config import ConfigError


def freeze_bottom(model: nn.Module, trainable_layers: int) -> nn.Module:
    """Freeze the embeddings and every block below the top `trainable_layers` blocks.

    What sits above the blocks (BERT's pooler, a decoder's final norm, the task head) trains.

    Raises:
        ConfigError: when `trainable_layers` exceeds the model's number of blocks.
    """
    name, layers = find_layers(model)
    if trainable_layers > len(layers):
        raise ConfigError(
            [
                f"method.trainable_layers: {trainable_layers} but the model has only "
                f"{len(layers)} layers; use at most {len(layers)} (or method=full)"
            ]
        )
    first_trained = len(layers) - trainable_layers
    frozen_blocks = {f"{name}.{i}." for i in range(first_trained)}
    for param_name, param in model.named_parameters():
        in_frozen_block = any(param_name.startswith(b) for b in frozen_blocks)
        param.requires_grad = not (in_frozen_block or is_embedding(param_name))
    return model


class FreezeFineTune(FineTuneModule):
    """Top-k layer fine-tuning; checkpoints keep only the trained blocks and head."""

    @override
    def adapt(self, model: nn.Module) -> nn.Module:
        return freeze_bottom(model, self.hparams.method["trainable_layers"])
