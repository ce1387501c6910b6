"""Houlsby-style bottleneck adapters (Houlsby et al. 2019), written here in ~100 lines.

AdapterHub's `adapters` package pins transformers ~=4.57 and tunelab runs on transformers 5.x,
so tunelab inserts its own adapters: a bottleneck (down-projection, nonlinearity,
zero-initialised up-projection), added residually after each target linear layer (BERT: the
attention output and the feed-forward output projections, before their residual + LayerNorm,
as in the paper) by a forward hook. The base weights keep their names and stay frozen; adapters, the
classification head and optionally the LayerNorms train. The export is that trained state dict
(`adapter_model.safetensors`) plus `adapter_config.json`; `load_adapter_export` rebuilds the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from modules.targets import check_targets
from tunelab.base.plugin import MethodConfig, ModelProbe, TaskConfig
from tunelab.base.schema import ModelConfig, PositiveInt

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


def bottleneck(hidden: int, size: int, activation: str) -> Any:
    """`down -> act -> up`; `up` starts at zero, so a new adapter adds nothing at first."""
    from torch import nn

    activations = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}
    down, up = nn.Linear(hidden, size), nn.Linear(size, hidden)
    nn.init.normal_(down.weight, std=1e-2)
    nn.init.zeros_(down.bias)
    nn.init.zeros_(up.weight)
    nn.init.zeros_(up.bias)
    return nn.Sequential(down, activations[activation](), up)


def _run_adapter(module: Any, inputs: Any, output: Any) -> Any:
    """Forward hook: add the adapter's output to the wrapped layer's (the residual)."""
    return output + module.adapter(output)


def add_adapters(model: Any, method: AdapterMethod, task: TaskConfig) -> Any:
    """Attach a bottleneck to every linear layer whose name ends with a `target_modules` entry.

    Freezes the model, then unfreezes the adapters, the classification head and (with
    `train_layer_norms`) every LayerNorm.
    """
    from torch import nn

    from modules.blocks import is_head

    model.requires_grad_(False)
    targets = tuple(f".{t}" for t in method.target_modules)
    matched = [
        m
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and f".{n}".endswith(targets)
    ]
    for linear in matched:
        size = method.bottleneck_size or linear.out_features // method.reduction_factor
        linear.adapter = bottleneck(linear.out_features, size, method.activation)
        linear.register_forward_hook(_run_adapter)
    for name, param in model.named_parameters():
        layer_norm = method.train_layer_norms and ("LayerNorm" in name or "layer_norm" in name)
        head = task.trains_head and is_head(name, model)
        param.requires_grad = ".adapter." in name or layer_norm or head
    return model


def load_adapter_export(
    folder: str | Path, task: TaskConfig, name_or_path: str | None = None
) -> Any:
    """Rebuild a model exported by `AdapterMethod.export` (base model + trained tensors).

    Args:
        folder: the export folder (`adapter_config.json`, `adapter_model.safetensors`).
        task: the task the model was trained for (it says how the base loads).
        name_or_path: the base model, if it moved since training (default: the one recorded).
    """
    from safetensors.torch import load_file

    from tunelab.base.models import load_pretrained

    folder = Path(folder)
    saved = json.loads((folder / CONFIG_FILE).read_text())
    model_cfg = ModelConfig.model_validate(
        saved["model"] | ({"name_or_path": name_or_path} if name_or_path else {})
    )
    model = load_pretrained(model_cfg, task, saved["labels"])
    model = add_adapters(model, AdapterMethod.model_validate(saved["method"]), task)
    state = load_file(folder / WEIGHTS_FILE)
    missing = {n for n, p in model.named_parameters() if p.requires_grad} - set(state)
    if missing:
        raise ValueError(f"{folder / WEIGHTS_FILE} lacks trained tensors: {sorted(missing)[:3]}")
    model.load_state_dict(state, strict=False)
    return model.eval()


class AdapterMethod(MethodConfig):
    """Bottleneck adapters after the attention and feed-forward outputs of every layer.

    Attributes:
        target_modules: linear layers followed by an adapter (name suffixes). BERT:
            `attention.output.dense` (attention output), `output.dense` (FFN output);
            Mistral/Llama: `o_proj`, `down_proj`.
        reduction_factor: bottleneck width = hidden size // reduction_factor ...
        bottleneck_size: ... unless given explicitly.
        activation: the bottleneck's nonlinearity.
        train_layer_norms: Houlsby et al. also train the LayerNorms.
    """

    target_modules: list[str] = ["attention.output.dense", "output.dense"]
    reduction_factor: PositiveInt = 16
    bottleneck_size: PositiveInt | None = None
    activation: Literal["relu", "gelu", "tanh", "silu"] = "gelu"
    train_layer_norms: bool = True

    def check(self, probe: ModelProbe, task: TaskConfig, problems: list[str]) -> None:
        """Every target must name a linear layer of the model."""
        check_targets(self.target_modules, probe, "method.target_modules", problems)

    def adapt(self, model: Any, task: TaskConfig) -> Any:
        """Attach the bottlenecks and freeze everything else."""
        return add_adapters(model, self, task)

    def export(self, model: Any, folder: Path, base: ModelConfig, labels: list[str] | None) -> bool:
        """The trained tensors and what rebuilds the model (`load_adapter_export`)."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        trained = {
            n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad
        }
        save_file(trained, folder / WEIGHTS_FILE)
        saved = {"method": self.dump(), "model": base.model_dump(), "labels": labels}
        (folder / CONFIG_FILE).write_text(json.dumps(saved, indent=2))
        model.config.save_pretrained(folder)
        return True

    def load_export(self, folder: Path, task: TaskConfig, info: dict[str, Any]) -> Any:
        """Rebuild the model `export` wrote (None for a merged export, a whole model)."""
        saved = folder / CONFIG_FILE
        if not saved.is_file() or "method" not in json.loads(saved.read_text()):
            return None
        return load_adapter_export(folder, task)
