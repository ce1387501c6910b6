"""Loading a base model for a task: quantisation, the bitsandbytes gate, k-bit preparation.

Plug-ins (methods that load a teacher or rebuild their export) and the run load models here;
the task says which Auto class and which extra arguments (label maps) the model needs.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from hydra.utils import get_class
from torch import nn

from tunelab.base.errors import ModelLoadError
from tunelab.base.plugin import TaskConfig
from tunelab.base.schema import ModelConfig

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Output heads stay in full precision under quantisation: the LM head as in the QLoRA paper,
# and classification heads because they train (peft `modules_to_save`) and a 4-bit copy cannot.
KEEP_UNQUANTIZED = ["lm_head", "classifier", "score"]


def gate_bitsandbytes(quantized: bool) -> None:
    """Let bitsandbytes be imported only when the base is quantised.

    peft imports bitsandbytes eagerly (`peft.helpers`) whenever it is installed: 1.5 s of start-up
    and a "Failed to load CPU gemm_4bit_forward" line on every run, LoRA on a plain base included.
    A `None` entry in `sys.modules` makes that import fail as if the package were absent, so peft
    skips its bnb code paths; a quantised run lifts the block (and peft's cached check) first.
    """
    if quantized:
        if "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None:
            del sys.modules["bitsandbytes"]
            if "peft.import_utils" in sys.modules:
                sys.modules["peft.import_utils"].is_bnb_4bit_available.cache_clear()
    elif "bitsandbytes" not in sys.modules:
        sys.modules["bitsandbytes"] = None  # type: ignore[assignment]


def quantization_config(model: ModelConfig) -> Any:
    """The `BitsAndBytesConfig` for `model.quantize` (None when the base is not quantised)."""
    if model.quantize is None:
        return None
    from transformers import BitsAndBytesConfig

    if model.quantize == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=KEEP_UNQUANTIZED)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        llm_int8_skip_modules=KEEP_UNQUANTIZED,
        bnb_4bit_quant_type=model.quantize,
        bnb_4bit_use_double_quant=model.double_quant,
        bnb_4bit_compute_dtype=TORCH_DTYPES[model.compute_dtype],
        bnb_4bit_quant_storage=TORCH_DTYPES.get(model.quant_storage, torch.uint8),
    )


def load_pretrained(
    model: ModelConfig, task: TaskConfig, labels: list[str] | None = None
) -> nn.Module:
    """Load the base model named by `model.name_or_path` for `task` (quantised if asked).

    Raises:
        ModelLoadError: when the folder or hub id cannot be loaded, with the fix.
    """
    kwargs: dict[str, Any] = {"dtype": TORCH_DTYPES[model.dtype], **model.config_overrides}
    kwargs |= task.model_kwargs(labels)
    if model.quantize is not None:
        kwargs["quantization_config"] = quantization_config(model)
    try:
        loaded = get_class(task.auto_model).from_pretrained(model.name_or_path, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot load model.name_or_path='{model.name_or_path}': "
            f"{str(err).splitlines()[0]}\n"
            "Fix: point model.name_or_path at a local folder holding config.json and weights, "
            "or at a Hugging Face Hub id reachable from this machine (offline: HF_HUB_OFFLINE=1 "
            "uses only the local cache)."
        ) from err
    if model.quantize is not None:
        keep_training_layout(loaded)
    return loaded


def keep_training_layout(model: nn.Module) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference; returns layers changed.

    On CPUs with avx512_bf16, bitsandbytes (0.50) repacks a `Linear4bit` weight into an
    inference-only layout at its first forward pass in eval mode without gradients, and does not
    undo it when training resumes: the next training step after a validation then fails with
    "a view of a leaf Variable that requires grad is being used in an in-place operation".
    Validation runs between training epochs, so the repacking is switched off.
    """
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def prepare_base(base: nn.Module, model: ModelConfig) -> nn.Module:
    """Gradient checkpointing (`model.gradient_checkpointing`) and k-bit training preparation.

    Non-reentrant checkpointing works with frozen inputs (LoRA on a 4-bit base) without hooks.
    """
    if model.quantize is not None:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(
            base,
            use_gradient_checkpointing=model.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    if model.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return base


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit packed weights count as their real size."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
