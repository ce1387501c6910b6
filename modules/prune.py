"""Structured pruning: remove whole FFN neurons and whole blocks, then fine-tune to recover.

Importance is measured on the first `method.batches` training batches, before training: an FFN
neuron scores its mean absolute activation times the norm of its output weights (the size of
what it adds to the residual stream, as Wanda scores weights), and a block scores the relative
change it makes to the hidden states. The lowest-scoring `ffn_fraction` of neurons in every
block (the same count everywhere, so `config.intermediate_size` stays one number) and the
`drop_layers` lowest-scoring blocks go; the matrices are rebuilt smaller, not masked, so the
export is an ordinary Hugging Face model that `from_pretrained` loads.

Attention heads are not pruned: transformers 5 removed `prune_heads`, and BERT's config derives
the head size from `hidden_size / num_attention_heads`, so a BERT with fewer heads per layer
would not load as an ordinary model.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

import torch
from pydantic import Field
from torch import nn

from tunelab.base.plugin import MethodConfig, ModelProbe, TaskConfig
from tunelab.base.schema import PositiveInt

# (modules feeding the FFN's hidden neurons, the module reading them), by architecture family
FFN = (
    (("intermediate.dense",), "output.dense"),  # BERT family
    (("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"),  # Llama, Mistral, Qwen
)


def ffn_of(block: nn.Module) -> tuple[list[nn.Linear], nn.Linear] | None:
    """A block's FFN input projections and output projection, or None."""
    names = dict(block.named_modules())
    for inputs, output in FFN:
        if output in names and all(name in names for name in inputs):
            return [names[name] for name in inputs], names[output]
    return None


def _replace(block: nn.Module, old: nn.Linear, new: nn.Linear) -> None:
    name = next(n for n, m in block.named_modules() if m is old)
    parent, _, attr = name.rpartition(".")
    setattr(block.get_submodule(parent) if parent else block, attr, new)


def _sliced(layer: nn.Linear, keep: torch.Tensor, dim: int) -> nn.Linear:
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


def shrink_ffn(block: nn.Module, keep: torch.Tensor) -> None:
    """Keep only the FFN neurons at `keep` in `block` (real, smaller matrices)."""
    inputs, output = ffn_of(block)
    for layer in inputs:
        _replace(block, layer, _sliced(layer, keep, 0))
    _replace(block, output, _sliced(output, keep, 1))


def measure(model: nn.Module, batches: list[dict[str, Any]]) -> tuple[list[Any], list[float]]:
    """Per block: FFN neuron scores and the block's relative change of the hidden states."""
    from modules.blocks import find_layers

    _, blocks = find_layers(model)
    neurons: list[Any] = [0.0] * len(blocks)
    change = [0.0] * len(blocks)

    def hooks(i: int, block: nn.Module) -> list[Any]:
        def on_ffn(module: nn.Module, args: tuple) -> None:
            neurons[i] = neurons[i] + args[0].detach().abs().flatten(0, -2).mean(0)

        def on_block(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            before = args[0] if args else kwargs["hidden_states"]
            after = out[0] if isinstance(out, tuple) else out
            change[i] += float((after - before).norm() / before.norm().clamp_min(1e-12))

        _, output = ffn_of(block)
        return [
            output.register_forward_pre_hook(on_ffn),
            block.register_forward_hook(on_block, with_kwargs=True),
        ]

    handles = [h for i, block in enumerate(blocks) for h in hooks(i, block)]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch in batches:
            model(**{k: v.to(device) for k, v in batch.items() if k != "labels"})
    model.train(was_training)
    for handle in handles:
        handle.remove()
    outputs = [ffn_of(block)[1].weight.detach() for block in blocks]
    return [n * w.norm(dim=0) for n, w in zip(neurons, outputs, strict=True)], change


class PruneMethod(MethodConfig):
    """Remove the least important FFN neurons and blocks, then fine-tune every weight.

    Attributes:
        ffn_fraction: share of each block's FFN neurons removed.
        drop_layers: how many whole blocks are removed (the least important).
        batches: training batches the importance is measured on.
    """

    ffn_fraction: float = Field(default=0.3, ge=0.0, lt=1.0)
    drop_layers: int = Field(default=0, ge=0)
    batches: PositiveInt = 8

    def check(self, probe: ModelProbe, task: TaskConfig, problems: list[str]) -> None:
        """Blocks must remain, and the FFN must be one this method knows."""
        if self.drop_layers >= probe.num_layers:
            problems.append(
                f"method.drop_layers: {self.drop_layers} would remove every one of the "
                f"{probe.num_layers} blocks of {probe.name_or_path}; use at most "
                f"{probe.num_layers - 1}"
            )
        known = [output for _, output in FFN]
        if not any(name.endswith(k) for name in probe.linear_names for k in known):
            problems.append(
                f"method=prune: {probe.model_type} has no FFN this method knows ({known})"
            )

    def prepare(self, model: Any, datamodule: Any, task: TaskConfig) -> Any:
        """Measure importance on a few training batches; remove neurons and blocks."""
        from modules.blocks import find_layers, replace_layers

        batches = list(islice(iter(datamodule.train_dataloader()), self.batches))
        scores, change = measure(model, batches)
        _, blocks = find_layers(model)
        width = int(scores[0].numel())
        kept = max(1, round(width * (1 - self.ffn_fraction)))
        for block, score in zip(blocks, scores, strict=True):
            shrink_ffn(block, torch.topk(score, kept).indices.sort().values)
        model.config.intermediate_size = kept
        if self.drop_layers:
            order = sorted(range(len(blocks)), key=lambda i: change[i], reverse=True)
            replace_layers(model, sorted(order[: len(blocks) - self.drop_layers]))
        return model

    def reshape(self, model: Any, state_dict: dict[str, Any]) -> Any:
        """Blocks and FFN widths as saved (every weight is saved, so which ones is moot)."""
        from modules.blocks import find_layers, replace_layers

        name, blocks = find_layers(model)
        saved = {int(k[len(name) + 1 :].split(".")[0]) for k in state_dict if k.startswith(name)}
        if saved and len(saved) < len(blocks):
            replace_layers(model, list(range(len(saved))))
        _, blocks = find_layers(model)
        for i, block in enumerate(blocks):
            _, output = ffn_of(block)
            local = next(n for n, m in block.named_modules() if m is output)
            width = state_dict[f"{name}.{i}.{local}.weight"].shape[1]
            if width != output.in_features:
                shrink_ffn(block, torch.arange(width))
                model.config.intermediate_size = width
        return model
