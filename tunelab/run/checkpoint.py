"""Rebuild a LightningModule from one of tunelab's checkpoints (frozen base + trained tensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.base.errors import ConfigError
from tunelab.base.schema import ModelConfig, OptimConfig


def load_module(path: str | Path) -> Any:
    """The module a checkpoint was saved from, with its trained weights, in eval mode.

    The checkpoint's hyperparameters hold the method's config with its `_target_`; it is
    validated again, the base model rebuilt from `model.name_or_path`, and the saved (trainable)
    tensors loaded on top.
    """
    import torch
    from hydra.utils import get_class

    from tunelab.config.validate import check_plugin

    saved = torch.load(path, map_location="cpu", weights_only=False)
    hparams = saved["hyper_parameters"]
    problems: list[str] = []
    method = check_plugin("method", hparams["method"], problems)
    if method is None:
        raise ConfigError([f"checkpoint {path}: {p}" for p in problems])
    cls = get_class(method.lightning_module)
    module = cls(
        method,
        ModelConfig.model_validate(hparams["model"]),
        OptimConfig.model_validate(hparams["optim"]),
        hparams.get("labels"),
        hparams.get("out_of_scope"),
    )
    module.load_state_dict(saved["state_dict"], strict=module.strict_loading)
    return module.eval()
