"""A whole Hugging Face model from any export: adapters merged into their base (PyTorch runtime).

`quantize=int8` is torchao's int8 weight-only quantisation (`Int8WeightOnlyConfig`): every
`nn.Linear` weight of the merged model is stored as int8 with a scale per output row, and
activations stay in floating point, so no calibration data is needed. It goes through
transformers' own torchao integration (`TorchAoConfig`): the merged model is saved, reloaded
quantised, and saved again, so `config.json` carries the `quantization_config` and a plain
`from_pretrained` (predict.py, the pyfunc, `mlflow models serve`) loads it quantised again.
Embeddings and norms stay fp32.
"""

from __future__ import annotations

import importlib.util
import shutil
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


def torchao_missing() -> str:
    """What stops torchao's int8 path here ('' when nothing does)."""
    try:
        found = importlib.util.find_spec("torchao") is not None
    except ValueError:  # sys.modules holds None for it: its import is blocked
        found = False
    if not found:
        return (
            "format=hf quantize=int8 quantises with torchao, which is not installed. Fix: "
            "pip install 'torchao>=0.15' (or the project's extra: pip install -e '.[quantize]'), "
            "or export to format=onnx quantize=int8"
        )
    return ""


def quantized_copy(model_class: Any, plain: Path) -> Any:
    """The model saved in `plain`, reloaded with torchao int8 weight-only Linear layers.

    Raises:
        ExportError: when torchao is missing or cannot quantise the model.
    """
    missing = torchao_missing()
    if missing:
        raise ExportError(missing)
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    config = TorchAoConfig(Int8WeightOnlyConfig())
    try:
        return model_class.from_pretrained(plain, quantization_config=config).eval()
    except (ImportError, RuntimeError, TypeError, ValueError) as err:
        raise ExportError(
            f"torchao cannot quantise {model_class.__name__} to int8: "
            f"{str(err).splitlines()[0][:300]}\nFix: format=onnx quantize=int8, or quantize=none"
        ) from err


def write(model: Any, tokenizer: Any, folder: Path, options: Any) -> dict[str, Any]:
    """The merged model as a Hugging Face folder (safetensors, int8 if asked); its info."""
    info = {"file": "model.safetensors", "runtime": "pytorch", "requirements": []}
    if options.quantize == "none":
        model.save_pretrained(folder, safe_serialization=True)
        return info
    plain = folder / "fp32"
    model.save_pretrained(plain, safe_serialization=True)
    try:
        quantized_copy(type(model), plain).save_pretrained(folder, safe_serialization=True)
    finally:
        shutil.rmtree(plain, ignore_errors=True)
    return info | {"requirements": ["torchao"]}
