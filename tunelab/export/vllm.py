"""What vLLM would refuse in a LoRA adapter export, read from its `adapter_config.json`.

vLLM serves LoRA adapters only (no other PEFT type) with rank up to `--max-lora-rank` (16 by
default; at most 512 after raising it), on its linear layers (attention and MLP projections),
and refuses `modules_to_save` on the embeddings or `lm_head`. Found before anyone serves it.
"""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_MAX_RANK = 16
LARGEST_RANK = 512
NOT_SERVED = ("embed_tokens", "lm_head", "wte", "word_embeddings", "embed_out")


def vllm_problems(folder: Path) -> list[str]:
    """What vLLM would refuse in the adapter export in `folder` (empty: none, or no adapter)."""
    path = Path(folder) / "adapter_config.json"
    if not path.is_file():
        return []
    saved = json.loads(path.read_text())
    if saved.get("peft_type") != "LORA":
        return [f"vLLM serves LoRA adapters only, not {saved.get('peft_type')}"]
    problems = []
    rank = max([int(saved.get("r", 0)), *map(int, (saved.get("rank_pattern") or {}).values())])
    if rank > LARGEST_RANK:
        problems.append(f"rank {rank}: vLLM serves LoRA rank up to {LARGEST_RANK}")
    elif rank > DEFAULT_MAX_RANK:
        problems.append(
            f"rank {rank} > {DEFAULT_MAX_RANK}: start vLLM with --max-lora-rank {rank} or more"
        )
    targets = saved.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    wrong = sorted(t for t in targets if any(n in t for n in NOT_SERVED))
    if wrong:
        problems.append(f"target_modules {wrong}: vLLM applies LoRA to linear layers only")
    saved_modules = sorted(
        m for m in saved.get("modules_to_save") or [] if any(n in m for n in NOT_SERVED)
    )
    if saved_modules:
        problems.append(
            f"modules_to_save {saved_modules}: vLLM refuses fully trained embeddings or lm_head "
            "in an adapter; serve the merged model instead (format=hf)"
        )
    if saved.get("use_dora"):
        problems.append("DoRA (use_dora): vLLM serves plain LoRA only; serve the merged model")
    return problems
