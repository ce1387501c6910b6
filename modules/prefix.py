"""Prefix tuning (Li & Liang 2021) through peft: trained key/value prefixes in every layer.

peft feeds the prefixes as `past_key_values`; BERT in transformers 5.x still accepts them (a
cache-aware attention), checked by `tests/test_methods.py`. `projection` reparameterises the
prefixes through a two-layer MLP while training, as in the paper.
"""

from __future__ import annotations

from typing import Any, ClassVar

from tunelab.base.plugin import MethodConfig, TaskConfig
from tunelab.base.schema import PositiveInt


class PrefixMethod(MethodConfig):
    """`num_virtual_tokens` key/value vectors per layer; the head trains too.

    Attributes:
        num_virtual_tokens: prefix length.
        projection: reparameterise the prefixes through an MLP while training.
        encoder_hidden_size: width of that MLP (used only with `projection`).
    """

    quantizable: ClassVar[bool] = True

    num_virtual_tokens: PositiveInt = 20
    projection: bool = False
    encoder_hidden_size: PositiveInt = 384

    def adapt(self, model: Any, task: TaskConfig) -> Any:
        """Wrap `model` with peft prefix tuning."""
        from peft import PrefixTuningConfig, get_peft_model

        config = PrefixTuningConfig(
            task_type=task.peft_task_type,
            num_virtual_tokens=self.num_virtual_tokens,
            prefix_projection=self.projection,
            encoder_hidden_size=self.encoder_hidden_size,
        )
        return get_peft_model(model, config)
