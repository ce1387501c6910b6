"""Attention-head pruning for `method=prune` (`method.head_fraction`): real smaller q/k/v/o.

A head scores like an FFN neuron (`modules.prune`): the mean norm of what it outputs times the
norm of its columns in the output projection, measured on training batches. Every block then
loses the same number of heads, because a Hugging Face config states one `num_attention_heads`
for all layers (no per-layer head counts: transformers 5 also dropped `config.pruned_heads`).

Only configs that state `head_dim` (Llama, Mistral, Qwen and other decoders) can describe the
result: BERT derives the head size as `hidden_size / num_attention_heads`, so a BERT with fewer
heads of the same size would not load with `from_pretrained`, and `check` refuses it.
With grouped-query attention each key/value group keeps the same number of query heads (the
groups stay whole, so k/v keep their size); with one query head per key/value head (plain
multi-head attention), whole heads go from q, k, v and o alike.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modules.blocks import replace, run_batches, sliced

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def attention_of(block: nn.Module) -> nn.Module | None:
    """The block's attention module with q/k/v/o projections (`self_attn`), or None."""
    attention = getattr(block, "self_attn", None)
    if attention is None or not all(hasattr(attention, name) for name in PROJECTIONS):
        return None
    return attention


def units(config: Any) -> tuple[int, bool]:
    """How many heads each block may lose from, and whether they are query heads in groups."""
    groups = config.num_attention_heads // config.num_key_value_heads
    return (groups, True) if groups > 1 else (config.num_key_value_heads, False)


def head_scores(model: nn.Module, blocks: nn.ModuleList, batches: list[dict]) -> list[Any]:
    """Per block, per query head: mean output norm times the norm of its o_proj columns."""
    size = model.config.head_dim
    found: list[Any] = [0.0] * len(blocks)

    def hook(i: int) -> Any:
        def on_output(module: nn.Module, args: tuple) -> None:
            heads = args[0].detach().unflatten(-1, (-1, size)).norm(dim=-1)
            found[i] = found[i] + heads.flatten(0, -2).mean(0)

        return on_output

    handles = [
        attention_of(b).o_proj.register_forward_pre_hook(hook(i)) for i, b in enumerate(blocks)
    ]
    run_batches(model, batches)
    for handle in handles:
        handle.remove()
    columns = [attention_of(b).o_proj.weight.detach().unflatten(1, (-1, size)) for b in blocks]
    return [s * w.norm(dim=(0, 2)) for s, w in zip(found, columns, strict=True)]


def heads_to_keep(score: torch.Tensor, config: Any, removed: int) -> list[int]:
    """The query heads a block keeps: the highest scores, the same count in every k/v group."""
    count, grouped = units(config)
    if not grouped:
        return sorted(torch.topk(score, count - removed).indices.tolist())
    per_group = score.view(config.num_key_value_heads, count)
    best = torch.topk(per_group, count - removed, dim=1).indices.sort(dim=1).values
    offsets = torch.arange(config.num_key_value_heads).unsqueeze(1) * count
    return (best + offsets).flatten().tolist()


def _rows(heads: list[int], size: int) -> torch.Tensor:
    return torch.tensor([h * size + k for h in heads for k in range(size)])


def shrink_attention(attention: nn.Module, config: Any, keep: list[int]) -> tuple[int, int]:
    """Keep query heads `keep` (and, without groups, their k/v heads); the new head counts."""
    size = config.head_dim
    _, grouped = units(config)
    kv_heads = config.num_key_value_heads if grouped else len(keep)
    query = _rows(keep, size)
    replace(attention, attention.q_proj, sliced(attention.q_proj, query, 0))
    replace(attention, attention.o_proj, sliced(attention.o_proj, query, 1))
    if not grouped:
        replace(attention, attention.k_proj, sliced(attention.k_proj, query, 0))
        replace(attention, attention.v_proj, sliced(attention.v_proj, query, 0))
    attention.num_key_value_groups = len(keep) // kv_heads
    return len(keep), kv_heads


def set_heads(model: nn.Module, heads: int, kv_heads: int) -> None:
    """The config's head counts after pruning (`head_dim`, stated in the config, stays)."""
    model.config.num_attention_heads, model.config.num_key_value_heads = heads, kv_heads


def prune_heads(model: nn.Module, blocks: nn.ModuleList, batches: list[dict], fraction: float):
    """Remove `fraction` of every block's heads (rounded; the lowest scores); config updated."""
    count, _ = units(model.config)
    removed = round(fraction * count)
    if not removed:
        return
    scores = head_scores(model, blocks, batches)
    config = model.config
    for block, score in zip(blocks, scores, strict=True):
        counts = shrink_attention(
            attention_of(block), config, heads_to_keep(score, config, removed)
        )
    set_heads(model, *counts)


def reshape_heads(model: nn.Module, blocks: nn.ModuleList, state_dict: dict, prefix: str) -> None:
    """Head counts as saved in `state_dict` (which heads is moot: every weight is loaded)."""
    config, size = model.config, model.config.head_dim
    for i, block in enumerate(blocks):
        attention = attention_of(block)
        local = next(n for n, m in block.named_modules() if m is attention)
        rows = state_dict[f"{prefix}.{i}.{local}.q_proj.weight"].shape[0] // size
        kv_rows = state_dict[f"{prefix}.{i}.{local}.k_proj.weight"].shape[0] // size
        if rows == attention.q_proj.out_features // size:
            return
        keep = list(range(rows))
        if units(config)[1]:  # groups: the first heads of each group
            per = rows // config.num_key_value_heads
            count = units(config)[0]
            keep = [g * count + k for g in range(config.num_key_value_heads) for k in range(per)]
        shrink_attention(attention, config, keep)
    set_heads(model, rows, kv_rows)
