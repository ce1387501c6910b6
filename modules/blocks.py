"""Plain functions that find the parts of a Hugging Face transformer a method works on.

Architectures name their block list differently (`bert.encoder.layer`, `model.layers`,
`transformer.h`); these helpers find it by structure instead of by name, so `freeze`, `adapter`
and `distill` work for encoders and decoders alike. `replace` and `sliced` rebuild a layer
smaller (`prune`, `heads`).
"""

from __future__ import annotations

import torch
from torch import nn


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The transformer block list: the longest `nn.ModuleList` in the model.

    Returns:
        Its qualified name (e.g. `bert.encoder.layer`) and the list itself.

    Raises:
        ValueError: when the model holds no `nn.ModuleList`.
    """
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no list of transformer layers")
    return max(lists, key=lambda item: len(item[1]))


def replace_layers(model: nn.Module, keep: list[int]) -> None:
    """Keep only the blocks at indices `keep` (in that order) and update the HF config."""
    name, layers = find_layers(model)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.ModuleList(layers[i] for i in keep))
    for new_index, block in enumerate(getattr(parent, attr)):
        for module in block.modules():  # decoders index their KV cache by layer
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = getattr(model, "config", None)
    if config is not None:
        config.num_hidden_layers = len(keep)
        if getattr(config, "layer_types", None):
            config.layer_types = [config.layer_types[i] for i in keep]


def is_embedding(name: str) -> bool:
    """Whether a parameter name belongs to an embedding module (`embeddings`, `embed_tokens`)."""
    return any("embed" in part or part in ("wte", "wpe") for part in name.split(".")[:-1])


def is_head(name: str, model: nn.Module) -> bool:
    """Whether parameter `name` is in the task head (outside `model.base_model`: `classifier`)."""
    prefix = getattr(model, "base_model_prefix", "")
    return bool(prefix) and hasattr(model, prefix) and not name.startswith(f"{prefix}.")


def replace(block: nn.Module, old: nn.Linear, new: nn.Linear) -> None:
    """Put `new` where `old` sits inside `block`."""
    name = next(n for n, m in block.named_modules() if m is old)
    parent, _, attr = name.rpartition(".")
    setattr(block.get_submodule(parent) if parent else block, attr, new)


def sliced(layer: nn.Linear, keep: torch.Tensor, dim: int) -> nn.Linear:
    """`layer` keeping output rows (`dim=0`) or input columns (`dim=1`) at `keep`."""
    weight = layer.weight.detach().index_select(dim, keep).clone()
    out_features, in_features = weight.shape
    new = nn.Linear(in_features, out_features, bias=layer.bias is not None)
    new = new.to(dtype=weight.dtype, device=weight.device)
    new.weight.data.copy_(weight)
    if layer.bias is not None:
        bias = layer.bias.detach()
        new.bias.data.copy_(bias.index_select(0, keep) if dim == 0 else bias)
    return new


def run_batches(model: nn.Module, batches: list[dict]) -> None:
    """Forward `batches` in eval mode without gradients (for hooks that measure); mode restored.

    Only the model's tensor inputs are passed: not `labels`, nor a batch's non-tensor entries.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch in batches:
            inputs = {k: v for k, v in batch.items() if k != "labels" and torch.is_tensor(v)}
            model(**{k: v.to(device) for k, v in inputs.items()})
    model.train(was_training)
