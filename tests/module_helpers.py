"""Build a method's LightningModule directly from its YAML name, as the pipeline would."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from tunelab.base.plugin import Labels
from tunelab.base.schema import ModelConfig, OptimConfig
from tunelab.config.compose import GROUP_DIRS
from tunelab.config.validate import check_plugin

OPTIM = {"lr": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.0, "scheduler": "constant"}


def plugin_config(group: str, name: str, **fields: Any) -> Any:
    """The validated config of `configs/<group>/<name>.yaml` with `fields` set on top."""
    raw = OmegaConf.to_container(OmegaConf.load(GROUP_DIRS[group] / f"{name}.yaml"))
    raw.pop("tracking_uri", None)  # an interpolation into the whole run config
    problems: list[str] = []
    found = check_plugin(group, raw | fields, problems)
    assert found is not None, problems
    return found


def method_config(name: str, **fields: Any) -> Any:
    """The validated config of `configs/method/<name>.yaml` with `fields` set on top."""
    return plugin_config("method", name, **fields)


def task_config(name: str = "sequence_classification", **fields: Any) -> Any:
    """The validated config of `configs/task/<name>.yaml` with `fields` set on top."""
    return plugin_config("task", name, **fields)


def make_module(
    name: str, model: dict[str, Any], labels: list[str] | None = None, **fields: Any
) -> Any:
    """The LightningModule for method `name` on `model` (a `model` group as a dict).

    `model` may name its task (`task: causal_lm`); the default is sequence classification.
    """
    from tunelab.run.module import FineTuneModule

    model = dict(model)
    task = task_config(model.pop("task", "sequence_classification"))
    method = method_config(name, **fields)
    classes = Labels(names=labels) if labels else None
    optim = OptimConfig.model_validate(OPTIM)
    return FineTuneModule(task, method, ModelConfig.model_validate(model), optim, classes)


def quantized_layers(model: Any) -> int:
    """How many bitsandbytes `Linear4bit` / `Linear8bitLt` layers `model` holds."""
    import bitsandbytes as bnb

    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return sum(isinstance(m, kinds) for m in model.modules())
