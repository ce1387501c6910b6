"""LoRA (Hu et al. 2021) and DoRA (Liu et al. 2024) through peft, on any base, quantised or not.

LoRA trains low-rank updates `BA` of the target linear layers. `use_dora=true` re-parameterises
each adapted weight as `m * (W + BA) / ||W + BA||` and also trains the per-channel magnitude `m`.
On a base quantised by bitsandbytes (`model.quantize=nf4`) this is QLoRA (Dettmers et al. 2023).
For classifiers peft's SEQ_CLS task type puts the new head in `modules_to_save`, so the adapter
folder holds adapters plus head and reloads on the base model alone.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from modules.targets import check_targets
from tunelab.base.plugin import MethodConfig, ModelProbe, TaskConfig
from tunelab.base.schema import PositiveInt, Probability


class LoraMethod(MethodConfig):
    """LoRA adapters on `target_modules`; the task head trains too.

    Attributes:
        r: rank of the update.
        alpha: scale numerator: the update is multiplied by `alpha / r`.
        dropout: dropout on the adapter's input.
        target_modules: linear layer names (suffixes), or `all-linear`.
        use_dora: weight-decomposed LoRA (DoRA).
    """

    quantizable: ClassVar[bool] = True

    r: PositiveInt = 8
    alpha: Annotated[float, Field(gt=0)] = 16
    dropout: Probability = 0.0
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    use_dora: bool = False

    def check(self, probe: ModelProbe, task: TaskConfig, problems: list[str]) -> None:
        """Every target must name a linear layer of the model."""
        check_targets(self.target_modules, probe, "method.target_modules", problems)

    def adapt(self, model: Any, task: TaskConfig) -> Any:
        """Wrap `model` with peft LoRA (or DoRA) adapters."""
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            task_type=task.peft_task_type,
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            use_dora=self.use_dora,
        )
        return get_peft_model(model, config)
