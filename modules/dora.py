"""DoRA (Liu et al. 2024) through peft: LoRA's direction update plus a learned magnitude.

Each adapted weight is re-parameterised as `m * (W + BA) / ||W + BA||`; peft trains `A`, `B` and
the per-output-channel magnitude `m` (`lora_magnitude_vector`). Its config is LoRA's plus
`use_dora=True`, so the `method` group and `modules.lora.lora_config` are shared.
"""

from __future__ import annotations

from peft import get_peft_model
from torch import nn
from typing_extensions import override

from modules.base import FineTuneModule
from modules.lora import lora_config


class DoraFineTune(FineTuneModule):
    """Weight-decomposed low-rank adapters on `method.target_modules`; the head trains too."""

    @override
    def adapt(self, model: nn.Module) -> nn.Module:
        return get_peft_model(model, lora_config(self.hparams.method, self.task, use_dora=True))
