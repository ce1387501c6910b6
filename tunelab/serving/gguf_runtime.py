"""GGUF exports served by llama.cpp (llama-cpp-python): a `generate` the task's hook can call.

A GGUF export (`format: gguf` in `model_info.json`) holds one file, `info["file"]`, converted
from the merged Hugging Face model, and that model's tokenizer. The task tokenises prompts as
for PyTorch; `GgufModel.generate` decodes each prompt's token ids with llama.cpp and returns
prompt + new tokens, padded, as `transformers`' `generate` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.base.errors import ModelLoadError

INSTALL = (
    "Fix: pip install llama-cpp-python (it builds llama.cpp with cmake and a C++ compiler; "
    "CMAKE_BUILD_PARALLEL_LEVEL=1 keeps the build's memory low)"
)


class GgufModel:
    """A llama.cpp model with the part of `transformers`' `generate` that tasks use.

    Args:
        path: the `.gguf` file.
    """

    def __init__(self, path: Path):
        from llama_cpp import Llama

        self.llama = Llama(model_path=str(path), n_ctx=0, verbose=False, seed=0)
        self.eos = self.llama.token_eos()

    def eval(self) -> GgufModel:
        """Inference only already (here for the PyTorch model's interface)."""
        return self

    def tokens(self, prompt: list[int], max_new_tokens: int, temperature: float) -> list[int]:
        """The new tokens after `prompt`: greedy when `temperature` is 0, up to end of text."""
        new: list[int] = []
        if max_new_tokens < 1:
            return new
        sampling = {"temp": temperature, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
        for token in self.llama.generate(prompt, reset=True, repeat_penalty=1.0, **sampling):
            new.append(int(token))
            if token == self.eos or len(new) >= max_new_tokens:
                break
        return new

    def generate(self, input_ids: Any, attention_mask: Any, **settings: Any) -> Any:
        """Prompt + generated ids per row (right-padded with `pad_token_id`), like HF's."""
        import torch

        sample = settings.get("do_sample", False)
        temperature = float(settings.get("temperature", 1.0)) if sample else 0.0
        limit, pad = int(settings.get("max_new_tokens", 64)), settings.get("pad_token_id", 0)
        rows = [
            self.tokens(ids[mask.bool()].tolist(), limit, temperature)
            for ids, mask in zip(input_ids, attention_mask, strict=True)
        ]
        width = max((len(r) for r in rows), default=0)
        new = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
        return torch.cat([input_ids, new.reshape(len(rows), width)], dim=1)


def load(folder: Path, info: dict[str, Any]) -> GgufModel:
    """The export's GGUF file in llama.cpp."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as err:
        raise ModelLoadError(
            f"{folder} is a GGUF export and llama-cpp-python is not installed. {INSTALL}"
        ) from err
    path = Path(folder) / info["file"]
    if not path.is_file():
        raise ModelLoadError(f"{folder}: the GGUF file {info['file']} is missing")
    return GgufModel(path)
