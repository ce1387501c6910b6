"""Speed switches resolved for the machine a run starts on: `trainer.precision=auto`, `compile`.

`auto` picks bf16 mixed precision only where it was measured faster (`benchmarks/precision.py`,
README "Speed"): a CUDA GPU with bf16 support, or a CPU with AMX tiles training a decoder (1.8x
per step). Everywhere else it is fp32: a CPU without AMX runs bf16 autocast slower (0.5-0.6x),
and BANKING77-sized encoder batches gained nothing even with AMX (0.9x at 32x24 tokens).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

GPU_ACCELERATORS = ("gpu", "cuda", "auto")


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX bf16 tiles (Linux `amx_bf16` flag, else torch's own check)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        return " amx_bf16" in cpuinfo.read_text()
    import torch

    return bool(getattr(torch._C._cpu, "_is_amx_tile_supported", lambda: False)())


def resolve_precision(precision: str, accelerator: str, task: str) -> str:
    """The Lightning precision `precision` stands for here (`auto` resolved, others as given)."""
    if precision != "auto":
        return precision
    import torch

    if accelerator in GPU_ACCELERATORS and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    if task == "causal_lm" and cpu_has_amx():
        return "bf16-mixed"
    return "32-true"


def compiled(model: Any) -> Any:
    """`trainer.compile=true`: compile the model's forward in place (state-dict keys unchanged).

    `dynamic=True`: batches are padded to their own longest row, so shapes change every step.
    """
    model.compile(dynamic=True)
    return model
