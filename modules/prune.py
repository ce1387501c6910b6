"""Structured pruning: remove attention heads, FFN neurons and whole blocks, then fine-tune.

Importance is measured on the first `method.batches` training batches, before training: an FFN
neuron scores its mean absolute activation times the norm of its output weights (the size of
what it adds to the residual stream, as Wanda scores weights), an attention head the mean norm
of its output times the norm of its output-projection columns (`modules.heads`), and a block
the relative change it makes to the hidden states. The lowest-scoring `head_fraction` of heads
and `ffn_fraction` of neurons in every block (the same counts everywhere, so the config's
`num_attention_heads` and `intermediate_size` stay one number each) and the `drop_layers`
lowest-scoring blocks go; the matrices are rebuilt smaller, not masked, so the export is an
ordinary Hugging Face model that `from_pretrained` loads.

Heads are pruned only in models whose config states `head_dim` (Llama, Mistral, Qwen): BERT's
config derives the head size from `hidden_size / num_attention_heads` and has no per-layer
head counts (transformers 5 also removed `prune_heads` and `config.pruned_heads`), so a BERT
with fewer heads would not load as an ordinary model; `check` says so.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

import torch
from pydantic import Field
from torch import nn

from modules.blocks import replace, run_batches, sliced
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


def shrink_ffn(block: nn.Module, keep: torch.Tensor) -> None:
    """Keep only the FFN neurons at `keep` in `block` (real, smaller matrices)."""
    inputs, output = ffn_of(block)
    for layer in inputs:
        replace(block, layer, sliced(layer, keep, 0))
    replace(block, output, sliced(output, keep, 1))


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
    run_batches(model, batches)
    for handle in handles:
        handle.remove()
    outputs = [ffn_of(block)[1].weight.detach() for block in blocks]
    return [n * w.norm(dim=0) for n, w in zip(neurons, outputs, strict=True)], change


class PruneMethod(MethodConfig):
    """Remove the least important heads, FFN neurons and blocks, then fine-tune every weight.

    Attributes:
        head_fraction: share of each block's attention heads removed (rounded; with grouped
            query attention, of the query heads in each key/value group).
        ffn_fraction: share of each block's FFN neurons removed.
        drop_layers: how many whole blocks are removed (the least important).
        batches: training batches the importance is measured on.
    """

    head_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
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
        if self.head_fraction:
            self._check_heads(probe, problems)
        known = [output for _, output in FFN]
        if not any(name.endswith(k) for name in probe.linear_names for k in known):
            problems.append(
                f"method=prune: {probe.model_type} has no FFN this method knows ({known})"
            )

    def _check_heads(self, probe: ModelProbe, problems: list[str]) -> None:
        from modules.heads import units

        config = probe.hf_config
        if getattr(config, "head_dim", None) is None or not hasattr(config, "num_key_value_heads"):
            problems.append(
                f"method.head_fraction: {probe.model_type}'s config has no head_dim (the head "
                "size is hidden_size / num_attention_heads), so a model with fewer heads would "
                "not load with from_pretrained. Fix: method.head_fraction=0 and prune FFN "
                "neurons (method.ffn_fraction) or blocks (method.drop_layers); heads prune in "
                "Llama, Mistral or Qwen models"
            )
            return
        count, grouped = units(config)
        if round(self.head_fraction * count) >= count:
            where = "query heads per key/value group" if grouped else "heads per block"
            problems.append(
                f"method.head_fraction: {self.head_fraction} of the {count} {where} of "
                f"{probe.name_or_path} removes them all; use less than {1 - 0.5 / count:.2f}"
            )

    def prepare(self, model: Any, datamodule: Any, task: TaskConfig) -> Any:
        """Measure importance on a few training batches; remove heads, neurons and blocks."""
        from modules.blocks import find_layers, replace_layers
        from modules.heads import prune_heads

        batches = list(islice(iter(datamodule.train_dataloader()), self.batches))
        _, blocks = find_layers(model)
        if self.head_fraction:
            prune_heads(model, blocks, batches, self.head_fraction)
        scores, change = measure(model, batches)
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
        """Blocks, head counts and FFN widths as saved (every weight is saved: which is moot)."""
        from modules.blocks import find_layers, replace_layers
        from modules.heads import attention_of, reshape_heads

        name, blocks = find_layers(model)
        saved = {int(k[len(name) + 1 :].split(".")[0]) for k in state_dict if k.startswith(name)}
        if saved and len(saved) < len(blocks):
            replace_layers(model, list(range(len(saved))))
        _, blocks = find_layers(model)
        if getattr(model.config, "head_dim", None) and attention_of(blocks[0]) is not None:
            reshape_heads(model, blocks, state_dict, name)
        for i, block in enumerate(blocks):
            _, output = ffn_of(block)
            local = next(n for n, m in block.named_modules() if m is output)
            width = state_dict[f"{name}.{i}.{local}.weight"].shape[1]
            if width != output.in_features:
                shrink_ffn(block, torch.arange(width))
                model.config.intermediate_size = width
        return model
