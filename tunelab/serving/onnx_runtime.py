"""ONNX exports served by onnxruntime: the model object the task's `predict` hook calls.

An ONNX export (`format: onnx` in `model_info.json`) holds one graph, `info["file"]`, from the
tokenizer's tensors (`input_ids`, `attention_mask`, ...) to `logits`. `OnnxModel` is called like
the PyTorch model (`model(**batch).logits`), so tasks predict through it unchanged.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tunelab.base.errors import ModelLoadError


class OnnxModel:
    """An onnxruntime session called like a Hugging Face model that returns `logits`.

    Args:
        path: the `.onnx` file.
    """

    def __init__(self, path: Path):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.inputs = [node.name for node in self.session.get_inputs()]

    def eval(self) -> OnnxModel:
        """Inference only already (here for the PyTorch model's interface)."""
        return self

    def __call__(self, **batch: Any) -> SimpleNamespace:
        """`logits` for a tokenised batch (torch tensors or numpy arrays)."""
        import numpy as np
        import torch

        feeds = {name: np.asarray(batch[name], dtype=np.int64) for name in self.inputs}
        [logits] = self.session.run(["logits"], feeds)
        return SimpleNamespace(logits=torch.from_numpy(logits))


def load(folder: Path, info: dict[str, Any]) -> OnnxModel:
    """The export's ONNX graph in an onnxruntime session."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ModelLoadError(
            f"{folder} is an ONNX export and onnxruntime is not installed. "
            "Fix: pip install onnxruntime"
        ) from err
    path = Path(folder) / info["file"]
    if not path.is_file():
        raise ModelLoadError(f"{folder}: the ONNX graph {info['file']} is missing")
    return OnnxModel(path)
