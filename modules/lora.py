"""LoRA (Hu et al. 2021) through peft: low-rank updates on the target linear layers."""

from __future__ import annotations

from peft import LoraConfig, get_peft_model
from torch import nn
from typing_extensions import override

from modules import tasks
from modules.base import FineTuneModule


def lora_config(method: dict, task: str, **extra: object) -> LoraConfig:
    """The peft `LoraConfig` for a `method` group (shared by lora, dora and qlora)."""
    return LoraConfig(
        task_type=tasks.PEFT_TASK_TYPES[task],
        r=method["r"],
        lora_alpha=method["alpha"],
        lora_dropout=method["dropout"],
        target_modules=method["target_modules"],
        **extra,
    )


class LoraFineTune(FineTuneModule):
    """LoRA adapters on `method.target_modules`; for classifiers the new head trains too.

    peft's SEQ_CLS task type adds the classification head to `modules_to_save`, so the adapter
    folder holds adapters plus head and reloads on the base model alone.
    """

    @override
    def adapt(self, model: nn.Module) -> nn.Module:
        return get_peft_model(model, lora_config(self.hparams.method, self.task))
