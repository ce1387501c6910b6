"""P-tuning (Liu et al. 2021) through peft: soft prompts produced by a small prompt encoder.

Unlike prompt tuning, the virtual-token embeddings pass through an MLP (`encoder_hidden_size`
wide) while training; the export stores the encoder's output.
"""

from __future__ import annotations

from typing import Any, ClassVar

from tunelab.base.plugin import MethodConfig, TaskConfig
from tunelab.base.schema import PositiveInt


class PTuningMethod(MethodConfig):
    """MLP-reparameterised soft prompt on the input embeddings; the head trains too.

    Attributes:
        num_virtual_tokens: soft-prompt length.
        encoder_hidden_size: width of the prompt encoder's MLP.
    """

    quantizable: ClassVar[bool] = True

    num_virtual_tokens: PositiveInt = 20
    encoder_hidden_size: PositiveInt = 128

    def adapt(self, model: Any, task: TaskConfig) -> Any:
        """Wrap `model` with a peft prompt encoder."""
        from peft import PromptEncoderConfig, get_peft_model

        config = PromptEncoderConfig(
            task_type=task.peft_task_type,
            num_virtual_tokens=self.num_virtual_tokens,
            encoder_hidden_size=self.encoder_hidden_size,
            encoder_reparameterization_type="MLP",
        )
        return get_peft_model(model, config)
