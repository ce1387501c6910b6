"""QLoRA (Dettmers et al. 2023): LoRA adapters (peft) on a base quantised by bitsandbytes.

The frozen base is loaded through `BitsAndBytesConfig` (4-bit NF4/FP4 with optional double
quantisation, or int8), prepared with `peft.prepare_model_for_kbit_training`, and wrapped with
the same `LoraConfig` as `method=lora`. bitsandbytes >= 0.48 runs these layers on CPU too.
"""

from __future__ import annotations

from typing import Any

from peft import get_peft_model, prepare_model_for_kbit_training
from torch import nn
from typing_extensions import override

from modules import tasks
from modules.base import FineTuneModule
from modules.lora import lora_config

# Output heads stay in full precision: the LM head as in the QLoRA paper, and classification
# heads because they train (peft `modules_to_save`) and a 4-bit copy cannot.
KEEP_UNQUANTIZED = ["lm_head", "classifier", "score"]


def bnb_config(method: dict[str, Any]) -> Any:
    """The `BitsAndBytesConfig` for `method.quantize`, `double_quant` and `compute_dtype`."""
    from transformers import BitsAndBytesConfig

    if method["quantize"] == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=KEEP_UNQUANTIZED)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        llm_int8_skip_modules=KEEP_UNQUANTIZED,
        bnb_4bit_quant_type=method["quantize"],
        bnb_4bit_use_double_quant=method["double_quant"],
        bnb_4bit_compute_dtype=tasks.TORCH_DTYPES[method["compute_dtype"]],
    )


def quantized_layers(model: nn.Module) -> int:
    """How many bitsandbytes `Linear4bit` / `Linear8bitLt` layers `model` holds."""
    import bitsandbytes as bnb

    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return sum(isinstance(m, kinds) for m in model.modules())


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


class QLoraFineTune(FineTuneModule):
    """LoRA on a 4-bit (or int8) frozen base; for classifiers the head trains in full precision.

    peft's SEQ_CLS task type puts the classification head in `modules_to_save`, as for LoRA.
    """

    @override
    def load_base(self) -> nn.Module:
        config = bnb_config(self.hparams.method)
        model = tasks.load_pretrained(
            self.hparams.model, self.hparams.labels, quantization_config=config
        )
        keep_training_layout(model)
        return model

    @override
    def adapt(self, model: nn.Module) -> nn.Module:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=bool(self.hparams.model.get("gradient_checkpointing")),
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        return get_peft_model(model, lora_config(self.hparams.method, self.task))
