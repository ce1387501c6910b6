"""(IA)^3 (Liu et al. 2022) through peft: learned vectors that rescale activations.

Attention targets (keys, values) are scaled on their output; feed-forward targets on their input.
Leaving `method.target_modules` / `method.feedforward_modules` null uses peft's per-architecture
defaults (BERT: key, value, output.dense; Mistral: k_proj, v_proj, down_proj).
"""

from __future__ import annotations

from peft import IA3Config, get_peft_model
from torch import nn
from typing_extensions import override

from modules import tasks
from modules.base import FineTuneModule


class IA3FineTune(FineTuneModule):
    """Rescaling vectors on the target modules; the classification head trains too."""

    @override
    def adapt(self, model: nn.Module) -> nn.Module:
        method = self.hparams.method
        config = IA3Config(
            task_type=tasks.PEFT_TASK_TYPES[self.task],
            target_modules=method["target_modules"],
            feedforward_modules=method["feedforward_modules"],
        )
        return get_peft_model(model, config)
