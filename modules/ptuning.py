"""P-tuning (Liu et al. 2021) through peft: soft prompts produced by a small prompt encoder.

Unlike prompt tuning, the virtual-token embeddings pass through an MLP
(`method.encoder_hidden_size` wide) while training; the export stores the encoder's output.
"""

from __future__ import annotations

from peft import PromptEncoderConfig, get_peft_model
from torch import nn
from typing_extensions import override

from modules import tasks
from modules.base import FineTuneModule


class PTuningFineTune(FineTuneModule):
    """MLP-reparameterised soft prompt on the input embeddings; the head trains too."""

    @override
    def adapt(self, model: nn.Module) -> nn.Module:
        method = self.hparams.method
        config = PromptEncoderConfig(
            task_type=tasks.PEFT_TASK_TYPES[self.task],
            num_virtual_tokens=method["num_virtual_tokens"],
            encoder_hidden_size=method["encoder_hidden_size"],
            encoder_reparameterization_type="MLP",
        )
        return get_peft_model(model, config)
