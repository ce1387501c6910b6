"""Speed switches resolved for the machine a run starts on: `trainer.precision=auto`, `compile`.

`auto` picks bf16 mixed precision where it is faster: on a CUDA GPU with bf16 support, and on a
CPU whose bf16 matrix multiply runs at least `CPU_BF16_GAIN` times fp32's, timed at start-up
(`cpu_bf16_gain`, about 50 ms). Measured (README "Speed"): on an AMD EPYC with avx512_bf16 and
no AMX the probe gives 2.2x and training steps ran 1.3x (MiniLM) to 1.6x (decoder) faster in
bf16-mixed; on a CPU whose bf16 GEMM was no faster than fp32 (1.0x) bf16-mixed steps ran at half
speed, and there the probe keeps fp32. Weights stay fp32 under bf16-mixed, so AdamW updates keep
full precision.
"""

from __future__ import annotations

import time
from functools import cache
from typing import Any

from tunelab.base.schema import CUDA_ACCELERATORS

CPU_BF16_GAIN = 1.5  # bf16 GEMM / fp32 GEMM throughput at which bf16-mixed steps paid


@cache
def cpu_bf16_gain(size: int = 1024, repeats: int = 3) -> float:
    """How many times faster a `size`-square bf16 matmul runs than an fp32 one on this CPU."""
    import torch

    def seconds(dtype: torch.dtype) -> float:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b  # warm-up: kernel selection, allocation
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        return time.perf_counter() - start

    return seconds(torch.float32) / seconds(torch.bfloat16)


def resolve_precision(precision: str, accelerator: str) -> str:
    """The Lightning precision `precision` stands for here (`auto` resolved, others as given)."""
    if precision != "auto":
        return precision
    import torch

    if accelerator in (*CUDA_ACCELERATORS, "auto") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_bf16_gain() >= CPU_BF16_GAIN else "32-true"


def compiled(model: Any) -> Any:
    """`trainer.compile=true`: compile the model's forward in place (state-dict keys unchanged).

    `dynamic=True`: batches are padded to their own longest row, so shapes change every step.
    """
    model.compile(dynamic=True)
    return model
