"""Merge a trained peft adapter into its base and save a plain Hugging Face model folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def merged_model(module: Any, adapter_folder: str | Path) -> Any:
    """Base model + the adapter in `adapter_folder`, merged into plain weights.

    The base is reloaded exactly as it was trained (`module.load_base()`); a bitsandbytes base
    (QLoRA) is then dequantised to its compute dtype, so the merged weights are the 4-bit weights
    the adapter was trained against plus the low-rank update, not the original full-precision
    ones.
    """
    from peft import PeftModel

    base = module.load_base()
    if getattr(base, "is_quantized", False):
        base = base.dequantize()
    merged = PeftModel.from_pretrained(base, str(adapter_folder)).merge_and_unload()
    if hasattr(merged.config, "quantization_config"):  # a plain model now: load it unquantised
        del merged.config.quantization_config
    return merged


def export_merged(module: Any, adapter_folder: str | Path, out: str | Path) -> Path | None:
    """Write the merged model (safetensors) to `out`; None when there is nothing to merge.

    Full fine-tuning already exports a whole model, and prompt-style adapters (prefix, prompt,
    p-tuning) have no weights to merge; both are skipped with a log line.
    """
    from peft import PeftModel

    if not isinstance(module.model, PeftModel):
        log.info("export.merge: %s exports a whole model already", type(module).__name__)
        return None
    if module.model.peft_config["default"].is_prompt_learning:
        log.warning("export.merge: prompt-learning adapters cannot be merged; skipped")
        return None
    out = Path(out)
    merged_model(module, adapter_folder).save_pretrained(out, safe_serialization=True)
    return out
