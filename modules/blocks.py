"""Plain functions that find the parts of a Hugging Face transformer a method works on.

Architectures name their block list differently (`bert.encoder.layer`, `model.layers`,
`transformer.h`); these helpers find it by structure instead of by name, so `freeze`, `adapter`
and `distill` work for encoders and decoders alike.
"""

from __future__ import annotations

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
