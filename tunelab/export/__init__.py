"""Exports of a finished run for deployment: ONNX, GGUF, merged Hugging Face; checked, logged."""
