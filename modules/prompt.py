"""Prompt tuning (Lester et al. 2021) through peft: trained soft-prompt embeddings.

Only `method.num_virtual_tokens` input embeddings (and the classification head) train; they are
prepended to the input of the first layer. `method.init_text` initialises them from the
embeddings of a text (e.g. "Classify the banking intent:") instead of at random.
"""

from __future__ import annotations

from peft import PromptTuningConfig, PromptTuningInit, get_peft_model
from torch import nn
from typing_extensions import override

from modules import tasks
from modules.base import FineTuneModule


class PromptFineTune(FineTuneModule):
    """Soft prompt on the input embeddings; the head trains too."""

    @override
    def adapt(self, model: nn.Module) -> nn.Module:
        method = self.hparams.method
        text = method["init_text"]
        config = PromptTuningConfig(
            task_type=tasks.PEFT_TASK_TYPES[self.task],
            num_virtual_tokens=method["num_virtual_tokens"],
            prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=text,
            tokenizer_name_or_path=self.hparams.model["name_or_path"] if text else None,
        )
        return get_peft_model(model, config)
