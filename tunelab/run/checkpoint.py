"""Rebuild a LightningModule from one of tunelab's checkpoints (frozen base + trained tensors).

Checkpoints hold plain data besides tensors (the module saves its configs as dicts), so they load
with `torch.load(..., weights_only=True)`: a checkpoint from anywhere cannot run code on load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.base.errors import ConfigError, ModelLoadError
from tunelab.base.plugin import Labels
from tunelab.base.schema import ModelConfig, OptimConfig


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents, tensors and plain data only (`weights_only=True`).

    Raises:
        ModelLoadError: when the file is not a readable checkpoint or holds other objects.
    """
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ModelLoadError(
            f"checkpoint {path} holds objects other than tensors and plain data, which tunelab "
            f"does not unpickle (they could run code): {str(err).splitlines()[0]}\n"
            "Fix: use a checkpoint written by tunelab, or re-save its state_dict alone"
        ) from err
    except (OSError, RuntimeError, EOFError) as err:
        raise ModelLoadError(
            f"checkpoint {path} is unreadable (truncated or corrupt?): {str(err).splitlines()[0]}"
        ) from err


def load_module(path: str | Path) -> Any:
    """The module a checkpoint was saved from, with its trained weights, in eval mode.

    The checkpoint's hyperparameters hold the task's and the method's configs with their
    `_target_`; they are validated again, the base model rebuilt from `model.name_or_path`, and
    the saved (trainable) tensors loaded on top.
    """
    from tunelab.config.validate import check_plugin
    from tunelab.run.module import FineTuneModule

    saved = read_checkpoint(path)
    hparams = saved["hyper_parameters"]
    problems: list[str] = []
    task = check_plugin("task", hparams.get("task"), problems)
    method = check_plugin("method", hparams["method"], problems)
    if task is None or method is None:
        raise ConfigError([f"checkpoint {path}: {p}" for p in problems])
    labels = Labels.model_validate(hparams["labels"]) if hparams.get("labels") else None
    module = FineTuneModule(
        task,
        method,
        ModelConfig.model_validate(hparams["model"]),
        OptimConfig.model_validate(hparams["optim"]),
        labels,
    )
    module.load_state_dict(saved["state_dict"], strict=module.strict_loading)
    return module.eval()
