"""Merge a trained peft adapter into its base and save a plain Hugging Face model folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def merged_model(module: Any, adapter_folder: str | Path) -> Any:
    """The module's base + adapter, merged into plain weights.

    The adapter is folded into the weights the module already holds, in place
    (`merge_and_unload`): no second copy of the base is loaded. The module's model is spent
    afterwards (its adapter layers are gone), so this runs last, once the adapter export in
    `adapter_folder` is written. A bitsandbytes base (QLoRA) is the exception: its 4-bit weights
    cannot take the update exactly, so the base is reloaded as it was trained
    (`module.load_base()`), dequantised to its compute dtype and given the adapter from
    `adapter_folder`; the merged weights are the 4-bit weights the adapter was trained against
    plus the low-rank update, not the original full-precision ones.
    """
    if getattr(module.model.get_base_model(), "is_quantized", False):
        merged = _merged_into_dequantised_base(module, adapter_folder)
    else:
        merged = module.model.merge_and_unload()
    if hasattr(merged.config, "quantization_config"):  # a plain model now: load it unquantised
        del merged.config.quantization_config
    return merged


def _merged_into_dequantised_base(module: Any, adapter_folder: str | Path) -> Any:
    """QLoRA: the reloaded 4-bit base, dequantised, with the saved adapter merged in."""
    from peft import PeftModel

    base = module.load_base().dequantize()
    return PeftModel.from_pretrained(base, str(adapter_folder)).merge_and_unload()


def export_merged(module: Any, adapter_folder: str | Path, out: str | Path) -> Path | None:
    """Write the merged model (safetensors) to `out`; None when there is nothing to merge.

    Call it last: the adapter is merged into `module`'s own weights (see `merged_model`).
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
