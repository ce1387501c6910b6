"""Model FLOPs of a training step and the machine's measured GEMM peak at a model's own shapes.

Convention (as `benchmarks/gpu_check.py`, PaLM's): N = weights of every `nn.Linear` (the blocks,
the task head or lm_head; not the embedding lookups); per trained token 6N for full fine-tuning,
4N for a frozen base (forward 2N + input gradients 2N; adapter weight gradients are not counted),
plus attention 12 * layers * s * hidden for a sequence of s real tokens (forward + backward, no
causal halving). Only non-padding tokens count, so padding is wasted work, not model FLOPs.
"""

from __future__ import annotations

import time

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def linear_shapes(model: torch.nn.Module) -> list[tuple[int, int]]:
    """(in_features, out_features) of every linear layer that holds its weight as a matrix."""
    shapes = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, torch.nn.Linear) and weight is not None and weight.ndim == 2:
            shapes.append((module.in_features, module.out_features))
    return shapes


def step_flops(model: torch.nn.Module, full: bool, tokens: int, squares: int) -> float:
    """Model FLOPs of one training step over `tokens` real tokens (`squares`: sum of s_i^2)."""
    config = model.config if hasattr(model, "config") else model.get_base_model().config
    n = sum(i * o for i, o in linear_shapes(model))
    attention = 12 * config.num_hidden_layers * config.hidden_size * squares
    return (6 if full else 4) * n * tokens + attention


def gemm_peak(shapes: list[tuple[int, int]], rows: int, dtype: str, repeats: int = 10) -> float:
    """Best FLOP/s of `x @ W.T` over the model's distinct linear shapes, `rows` tokens per batch."""
    best = 0.0
    for fan_in, fan_out in sorted(set(shapes)):
        x = torch.randn(rows, fan_in, dtype=DTYPES[dtype])
        w = torch.randn(fan_out, fan_in, dtype=DTYPES[dtype])
        for _ in range(3):  # warm-up: allocator, kernel selection
            x @ w.T
        start = time.perf_counter()
        for _ in range(repeats):
            x @ w.T
        seconds = (time.perf_counter() - start) / repeats
        best = max(best, 2 * rows * fan_in * fan_out / seconds)
    return best
