"""Which Lightning strategy fits the config: checked before torch is imported.

`trainer.strategy` names one of Lightning's registered strategies (the schema lists them). Here
the combinations that cannot work are refused with the reason and the fix: a sharded strategy
(FSDP, DeepSpeed) on a CPU, DeepSpeed without its package, a bitsandbytes-quantised base that
the strategy cannot shard, and a sweep whose every trial would start several processes.
Availability is checked with `importlib.util.find_spec`, which imports nothing.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import Any

SHARDED = ("fsdp", "deepspeed")


def processes(trainer: dict[str, Any]) -> int | None:
    """Processes a run starts (devices x nodes); None when `devices=auto` leaves it open."""
    devices = trainer.get("devices", 1)
    if not isinstance(devices, int):
        return None
    return devices * int(trainer.get("num_nodes", 1) or 1)


def _check_hardware(strategy: str, trainer: dict[str, Any], problems: list[str]) -> None:
    """Sharded strategies need GPUs; DeepSpeed needs its package."""
    if strategy.startswith(SHARDED) and trainer.get("accelerator") == "cpu":
        problems.append(
            f"trainer.strategy={strategy}: shards a model across GPUs and Lightning runs it on "
            "CUDA only; use trainer.accelerator=gpu, or trainer.strategy=ddp to train on "
            "several CPU processes"
        )
    if strategy.startswith("deepspeed") and find_spec("deepspeed") is None:
        problems.append(
            f"trainer.strategy={strategy}: the deepspeed package is not installed; "
            "`pip install deepspeed` (it needs a CUDA toolkit), or use trainer.strategy=fsdp"
        )


def _check_quantized(strategy: str, model: dict[str, Any], problems: list[str]) -> None:
    """A bitsandbytes base: fine with DDP, with FSDP only when 4-bit storage matches compute."""
    quantize = model.get("quantize")
    if not quantize:
        return
    if strategy.startswith("deepspeed"):
        problems.append(
            f"trainer.strategy={strategy} with model.quantize={quantize}: DeepSpeed ZeRO cannot "
            "partition bitsandbytes weights; use trainer.strategy=ddp (each GPU holds the "
            "quantised base) or trainer.strategy=fsdp with a 4-bit base"
        )
    elif strategy.startswith("fsdp") and quantize == "int8":
        problems.append(
            "trainer.strategy=fsdp with model.quantize=int8: FSDP cannot flatten 8-bit "
            "bitsandbytes weights; use model.quantize=nf4 (with model.quant_storage equal to "
            "model.compute_dtype) or trainer.strategy=ddp"
        )
    elif strategy.startswith("fsdp"):
        storage, compute = model.get("quant_storage", "uint8"), model.get("compute_dtype")
        dtype = model.get("dtype", "float32")
        if not storage == compute == dtype:
            problems.append(
                f"trainer.strategy=fsdp with model.quantize={quantize}: FSDP flattens the packed "
                f"4-bit weights with the other parameters, so model.quant_storage ({storage}), "
                f"model.compute_dtype ({compute}) and model.dtype ({dtype}) must be one dtype; "
                "set all three to bfloat16"
            )


def check_strategy(raw: dict[str, Any], problems: list[str]) -> None:
    """Append a problem for every strategy combination that cannot run (see module doc).

    Args:
        raw: the resolved config as plain data (before or after schema validation).
        problems: the list every problem is appended to.
    """
    trainer, model = raw.get("trainer") or {}, raw.get("model") or {}
    if not isinstance(trainer, dict) or not isinstance(model, dict):
        return
    strategy = str(trainer.get("strategy", "auto"))
    _check_hardware(strategy, trainer, problems)
    _check_quantized(strategy, model, problems)
    count = processes(trainer)
    if raw.get("sweep") is not None and (count is None or count > 1):
        problems.append(
            "trainer.devices/num_nodes: a sweep trains one trial per process; keep "
            "trainer.devices=1 and trainer.num_nodes=1, and start one sweep worker per GPU "
            "(CUDA_VISIBLE_DEVICES=i python run.py ... sweep=...) on the same sweep.storage"
        )
