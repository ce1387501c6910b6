"""Houlsby-style bottleneck adapters (Houlsby et al. 2019), written here in ~100 lines.

AdapterHub's `adapters` package pins transformers ~=4.57 and tunelab runs on transformers 5.x,
so tunelab inserts its own adapters: a `Bottleneck` (down-projection, nonlinearity, zero-initialised
up-projection, residual) is attached to each target linear layer (BERT: the attention output and
the feed-forward output projections, before their residual + LayerNorm, as in the paper) and
applied by a forward hook. The base weights keep their names and stay frozen; adapters, the
classification head and optionally the LayerNorms train. The export is that trained state dict
(`adapter_model.safetensors`) plus `adapter_config.json`; `load_adapter_export` rebuilds the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from typing_extensions import override

from modules import tasks
from modules.base import FineTuneModule
from modules.blocks import is_head

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


class Bottleneck(nn.Module):
    """`h + up(act(down(h)))`; `up` starts at zero, so a new adapter is the identity."""

    def __init__(self, hidden: int, bottleneck: int, activation: str = "gelu"):
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, hidden)
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    @override
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.act(self.down(hidden)))


def _run_adapter(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: pass the wrapped layer's output through its adapter."""
    return module.adapter(output)


def add_adapters(model: nn.Module, method: dict[str, Any], task: str) -> nn.Module:
    """Attach a bottleneck to every linear layer whose name ends with a `method.target_modules`.

    Freezes the model, then unfreezes the adapters, the classification head and (with
    `method.train_layer_norms`) every LayerNorm.

    Raises:
        ValueError: when no linear layer matches `method.target_modules`.
    """
    model.requires_grad_(False)
    targets = tuple(f".{t}" for t in method["target_modules"])
    matched = [
        m
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and f".{n}".endswith(targets)
    ]
    if not matched:
        raise ValueError(f"no linear layer matches method.target_modules={targets}")
    for linear in matched:
        size = method["bottleneck_size"] or linear.out_features // method["reduction_factor"]
        linear.adapter = Bottleneck(linear.out_features, size, method["activation"])
        linear.register_forward_hook(_run_adapter)
    for name, param in model.named_parameters():
        layer_norm = method["train_layer_norms"] and ("LayerNorm" in name or "layer_norm" in name)
        head = task == "sequence_classification" and is_head(name, model)
        param.requires_grad = ".adapter." in name or layer_norm or head
    return model


def load_adapter_export(folder: str | Path, name_or_path: str | None = None) -> nn.Module:
    """Rebuild a model exported by `AdapterFineTune.export` (base model + trained tensors).

    Args:
        folder: the export folder (`adapter_config.json`, `adapter_model.safetensors`).
        name_or_path: the base model, if it moved since training (default: the one recorded).
    """
    folder = Path(folder)
    saved = json.loads((folder / CONFIG_FILE).read_text())
    model_cfg = saved["model"] | ({"name_or_path": name_or_path} if name_or_path else {})
    model = tasks.load_pretrained(model_cfg, saved["labels"])
    model = add_adapters(model, saved["method"], model_cfg["task"])
    state = load_file(folder / WEIGHTS_FILE)
    missing = {n for n, p in model.named_parameters() if p.requires_grad} - set(state)
    if missing:
        raise ValueError(f"{folder / WEIGHTS_FILE} lacks trained tensors: {sorted(missing)[:3]}")
    model.load_state_dict(state, strict=False)
    return model.eval()


class AdapterFineTune(FineTuneModule):
    """Bottleneck adapters after the attention and feed-forward outputs of every layer."""

    @override
    def adapt(self, model: nn.Module) -> nn.Module:
        return add_adapters(model, self.hparams.method, self.task)

    @override
    def export(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        trained = {
            n: p.detach().contiguous() for n, p in self.model.named_parameters() if p.requires_grad
        }
        save_file(trained, folder / WEIGHTS_FILE)
        hparams = self.hparams
        saved = {"method": hparams.method, "model": hparams.model, "labels": hparams.labels}
        (folder / CONFIG_FILE).write_text(json.dumps(saved, indent=2))
        self.model.config.save_pretrained(folder)
        return folder
