"""(IA)^3 (Liu et al. 2022) through peft: learned vectors that rescale activations.

Attention targets (keys, values) are scaled on their output; feed-forward targets on their input.
Leaving `target_modules` / `feedforward_modules` null uses peft's per-architecture defaults
(BERT: key, value, output.dense; Mistral: k_proj, v_proj, down_proj).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import model_validator

from modules.targets import check_targets
from tunelab.base.plugin import MethodConfig, ModelProbe, TaskConfig


class IA3Method(MethodConfig):
    """Rescaling vectors on the target modules; the classification head trains too.

    Attributes:
        target_modules: layers whose activations are rescaled (null: peft's defaults).
        feedforward_modules: the subset of `target_modules` scaled on their input.
    """

    quantizable: ClassVar[bool] = True

    target_modules: list[str] | None = None
    feedforward_modules: list[str] | None = None

    @model_validator(mode="after")
    def _feedforward_subset(self) -> IA3Method:
        extra = set(self.feedforward_modules or []) - set(self.target_modules or [])
        if self.target_modules is not None and extra:
            raise ValueError(f"feedforward_modules {sorted(extra)} are not in target_modules")
        return self

    def check(self, probe: ModelProbe, task: TaskConfig, problems: list[str]) -> None:
        """Every target must name a linear layer of the model."""
        check_targets(self.target_modules, probe, "method.target_modules", problems)

    def adapt(self, model: Any, task: TaskConfig) -> Any:
        """Wrap `model` with peft (IA)^3 vectors."""
        from peft import IA3Config, get_peft_model

        config = IA3Config(
            task_type=task.peft_task_type,
            target_modules=self.target_modules,
            feedforward_modules=self.feedforward_modules,
        )
        return get_peft_model(model, config)
