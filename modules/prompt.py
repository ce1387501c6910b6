"""Prompt tuning (Lester et al. 2021) through peft: trained soft-prompt embeddings.

Only `num_virtual_tokens` input embeddings (and the classification head) train; they are
prepended to the input of the first layer. `init_text` initialises them from the embeddings of a
text (e.g. "Classify the banking intent:") instead of at random.
"""

from __future__ import annotations

from typing import Any, ClassVar

from tunelab.base.plugin import MethodConfig, TaskConfig
from tunelab.base.schema import PositiveInt


class PromptMethod(MethodConfig):
    """Soft prompt on the input embeddings; the head trains too.

    Attributes:
        num_virtual_tokens: soft-prompt length.
        init_text: text whose embeddings start the prompt (null: random init).
    """

    quantizable: ClassVar[bool] = True

    num_virtual_tokens: PositiveInt = 20
    init_text: str | None = None

    def adapt(self, model: Any, task: TaskConfig) -> Any:
        """Wrap `model` with a peft soft prompt."""
        from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

        text = self.init_text
        config = PromptTuningConfig(
            task_type=task.peft_task_type,
            num_virtual_tokens=self.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=text,
            tokenizer_name_or_path=model.name_or_path if text else None,
        )
        return get_peft_model(model, config)
