"""Layer-wise learning-rate decay (Clark et al. 2020, ELECTRA; Sun et al. 2019 on BERT).

With `optim.layer_decay=d` below 1, block `i` of `L` trains at `lr * d^(L - i)`, the embeddings
at `lr * d^(L + 1)` and whatever sits above the blocks (pooler, head) at `lr`: the lower layers,
which hold the most general features, move least. Blocks are found by their parameter names
(`...layer.3.`, `...layers.3.`, `...h.3.`, `...block.3.`), as in every Hugging Face encoder and
decoder; `d=1` (the default) leaves one learning rate for all.
"""

from __future__ import annotations

import re
from typing import Any

import torch

BLOCK = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")
EMBEDDING = ("embed", "wte.", "wpe.")


def depth(name: str, blocks: int) -> int:
    """0 for embeddings, `i + 1` for block `i`, `blocks + 1` for what sits above the blocks."""
    found = BLOCK.search(f".{name}")
    if found:
        return int(found.group(1)) + 1
    return 0 if any(part in name for part in EMBEDDING) else blocks + 1


def decayed_groups(
    model: torch.nn.Module, weight_decay: float, lr: float, layer_decay: float
) -> list[dict[str, Any]]:
    """AdamW parameter groups per depth, each with its decayed `lr`.

    As `tunelab.run.module.param_groups`: no weight decay on biases and norms.
    """
    named = list(model.named_parameters())
    indices = [int(m.group(1)) for n, _ in named if (m := BLOCK.search(f".{n}"))]
    blocks = max(indices, default=-1) + 1
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in named:
        if not param.requires_grad:
            continue
        level, decays = depth(name, blocks), param.ndim >= 2
        group = groups.setdefault(
            (level, decays),
            {
                "params": [],
                "weight_decay": weight_decay if decays else 0.0,
                "lr": lr * layer_decay ** (blocks + 1 - level),
            },
        )
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]
