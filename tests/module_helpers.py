"""Build a method's LightningModule directly from its YAML name, as the pipeline would."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from tunelab.base.schema import ModelConfig, OptimConfig
from tunelab.config.compose import GROUP_DIRS
from tunelab.config.validate import check_plugin

OPTIM = {"lr": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.0, "scheduler": "constant"}


def method_config(name: str, **fields: Any) -> Any:
    """The validated config of `configs/method/<name>.yaml` with `fields` set on top."""
    raw = OmegaConf.to_container(OmegaConf.load(GROUP_DIRS["method"] / f"{name}.yaml"))
    raw.pop("tracking_uri", None)  # an interpolation into the whole run config
    problems: list[str] = []
    method = check_plugin("method", raw | fields, problems)
    assert method is not None, problems
    return method


def make_module(
    name: str, model: dict[str, Any], labels: list[str] | None = None, **fields: Any
) -> Any:
    """The LightningModule for method `name` on `model` (a `model` group as a dict)."""
    from hydra.utils import get_class

    method = method_config(name, **fields)
    cls = get_class(method.lightning_module)
    return cls(method, ModelConfig.model_validate(model), OptimConfig.model_validate(OPTIM), labels)


def quantized_layers(model: Any) -> int:
    """How many bitsandbytes `Linear4bit` / `Linear8bitLt` layers `model` holds."""
    import bitsandbytes as bnb

    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return sum(isinstance(m, kinds) for m in model.modules())
