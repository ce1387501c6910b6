"""ONNX export of a whole (merged) model with torch's exporter; int8 by onnxruntime's quantiser.

The graph maps the tokenizer's tensors to `logits` with dynamic batch and sequence axes; it is
what `tunelab.serving.onnx_runtime` runs. optimum's exporter would do the same but pins an
older transformers; `torch.onnx.export(dynamo=True)` is torch's own, maintained exporter (its
older TorchScript path traced BERT's attention mask for one shape and drifted by 1e-2).
`quantize=int8` is onnxruntime's dynamic quantisation: int8 weights, activations quantised per
batch at run time (no calibration data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tunelab.export.check import ExportError

FILE = "model.onnx"
SINGLE_FILE_LIMIT = 1.5e9  # bytes: protobuf's 2 GB cap; larger graphs keep external weights
SAMPLE = ["a short text", "a somewhat longer text for the sample batch of the export"]


class Logits(torch.nn.Module):
    """The model with the tokenizer's tensors as inputs and `logits` as the one output."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The model's logits."""
        given = {"attention_mask": attention_mask, "token_type_ids": token_type_ids}
        extra = {name: value for name, value in given.items() if value is not None}
        return self.model(input_ids=input_ids, **extra).logits


def export_graph(model: Any, tokenizer: Any, path: Path) -> None:
    """Write `model` (inputs as the tokenizer gives them, output `logits`) to `path`.

    Raises:
        ExportError: when torch's exporter cannot capture the model.
    """
    batch = tokenizer(SAMPLE, padding=True, return_tensors="pt")
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in batch]
    rows, length = torch.export.Dim("batch"), torch.export.Dim("sequence")
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    try:
        with torch.no_grad():
            torch.onnx.export(
                Logits(model.float()).eval(),
                (),
                str(path),
                kwargs={name: batch[name] for name in names},
                input_names=names,
                output_names=["logits"],
                dynamic_shapes={name: {0: rows, 1: length} for name in names},
                dynamo=True,
                external_data=size > SINGLE_FILE_LIMIT,
                verbose=False,
            )
    except Exception as err:  # torch.export raises many kinds for code it cannot capture
        summary = next((line for line in str(err).splitlines() if "Error" in line), str(err))
        raise ExportError(
            f"torch's ONNX exporter cannot capture {type(model).__name__}: {summary[:300]}\n"
            "Fix: format=hf serves the model in PyTorch"
        ) from err


def write(model: Any, tokenizer: Any, folder: Path, options: Any) -> dict[str, Any]:
    """The ONNX graph of `model` in `folder` (int8 weights if `options.quantize=int8`); its info."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILE
    if options.quantize == "none":
        export_graph(model, tokenizer, path)
    else:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        plain = folder / "fp32" / FILE
        plain.parent.mkdir()
        export_graph(model, tokenizer, plain)
        quantize_dynamic(plain, path, weight_type=QuantType.QInt8)
        for file in plain.parent.iterdir():
            file.unlink()
        plain.parent.rmdir()
    return {"file": FILE, "runtime": "onnxruntime", "requirements": ["onnxruntime"]}
