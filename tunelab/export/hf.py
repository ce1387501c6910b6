"""A whole Hugging Face model from any export: adapters merged into their base (PyTorch runtime)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.export.check import ExportError


def whole_model(model: Any) -> Any:
    """`model` as plain weights: a PEFT adapter merged into its base (in place).

    Raises:
        ExportError: for prompt-learning adapters (prefix, prompt, p-tuning), which have no
            weights to merge.
    """
    config = getattr(model, "peft_config", {}).get("default")
    if config is None:
        return model
    if config.is_prompt_learning:
        raise ExportError(
            f"a {config.peft_type} adapter adds virtual tokens instead of weights, so it cannot "
            "be merged into a whole model for this format. Fix: serve the run's export folder "
            "as it is (predict.py, the run's MLflow model), or fine-tune with LoRA"
        )
    return model.merge_and_unload()


def write(model: Any, tokenizer: Any, folder: Path, options: Any) -> dict[str, Any]:
    """The merged model as a Hugging Face folder (safetensors); its info."""
    model.save_pretrained(folder, safe_serialization=True)
    return {"file": "model.safetensors", "runtime": "pytorch", "requirements": []}
