"""Prefix tuning (Li & Liang 2021) through peft: trained key/value prefixes in every layer.

peft feeds the prefixes as `past_key_values`; BERT in transformers 5.x still accepts them (a
cache-aware attention), checked by `tests/test_methods.py`. `method.projection` reparameterises
the prefixes through a two-layer MLP while training, as in the paper.
"""

from __future__ import annotations

from peft import PrefixTuningConfig, get_peft_model
from torch import nn
from typing_extensions import override

from modules import tasks
from modules.base import FineTuneModule


class PrefixFineTune(FineTuneModule):
    """`method.num_virtual_tokens` key/value vectors per layer; the head trains too."""

    @override
    def adapt(self, model: nn.Module) -> nn.Module:
        method = self.hparams.method
        config = PrefixTuningConfig(
            task_type=tasks.PEFT_TASK_TYPES[self.task],
            num_virtual_tokens=method["num_virtual_tokens"],
            prefix_projection=method["projection"],
            encoder_hidden_size=method["encoder_hidden_size"],
        )
        return get_peft_model(model, config)
