"""Prompt building, response-only label masks, sequence packing and padding for decoders.

Plain functions shared by every instruction datamodule and by the mask-preview callback.

Prompt format (`data.template`):
- `chat` (the default `auto` when the tokenizer has a chat template): the user turn is
  `instruction` (plus a blank line and `input` when given), rendered by the tokenizer's own chat
  template; the response is what the template appends after the generation prompt.
- `plain` (`auto` without a chat template), documented here and in the README::

      <bos>### Instruction:
      {instruction}

      ### Input:            <- only when the example has an input
      {input}

      ### Response:
      {response}<eos>

Only response tokens (and the closing eos) get labels; prompt and padding tokens are -100.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from tunelab.base.errors import DataError

IGNORE = -100
PLAIN_PROMPT = "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"


def uses_chat_template(tokenizer: Any, template: str) -> bool:
    """Whether examples are rendered with the tokenizer's chat template (`auto`: if it has one)."""
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "data.template=chat but the tokenizer has no chat template. "
            "Fix: data.template=plain (or auto), or a model whose tokenizer defines one"
        )
    return template == "chat" or (template == "auto" and bool(tokenizer.chat_template))


def user_message(instruction: str, context: str = "") -> str:
    """The user turn of a chat: the instruction, then the input after a blank line."""
    return f"{instruction}\n\n{context}" if context else instruction


def prompt_and_response_text(
    tokenizer: Any, example: dict[str, str], chat: bool, system_prompt: str | None = None
) -> tuple[str, str]:
    """Render one example as (prompt text, response text); their concatenation is the sample."""
    if not chat:
        block = f"### Input:\n{example['input']}\n\n" if example.get("input") else ""
        prompt = PLAIN_PROMPT.format(instruction=example["instruction"], input_block=block)
        return prompt, example["response"]
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    user = user_message(example["instruction"], example.get("input", ""))
    messages.append({"role": "user", "content": user})
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    reply = {"role": "assistant", "content": example["response"]}
    full = tokenizer.apply_chat_template([*messages, reply], tokenize=False)
    if not full.startswith(prompt):
        raise DataError(
            "the tokenizer's chat template does not render the conversation as prompt + reply, "
            "so the response tokens cannot be located. Fix: data.template=plain"
        )
    return prompt, full[len(prompt) :]


def encode_prompt(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    """Token ids of a prompt (chat templates write the bos themselves; plain gets one here)."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return ids if chat or bos is None else [bos, *ids]


def inference_prompt(tokenizer: Any, row: dict[str, Any], info: dict[str, Any]) -> str:
    """The training-time prompt of one row to predict (`info`: an export's metadata)."""
    chat = uses_chat_template(tokenizer, info["template"])
    example = {"instruction": str(row["instruction"]), "input": str(row.get("input") or "")}
    text, _ = prompt_and_response_text(
        tokenizer, example | {"response": ""}, chat, info["system_prompt"]
    )
    bos = tokenizer.bos_token
    return text if chat or bos is None else bos + text


def encode_example(
    tokenizer: Any,
    example: dict[str, str],
    max_length: int,
    chat: bool,
    system_prompt: str | None = None,
) -> dict[str, list[int]]:
    """Token ids and labels of one example: labels are -100 on every prompt token.

    The response is truncated to fit `max_length`; a prompt that leaves no room for a single
    response token raises `DataError` (the caller adds the row number).
    """
    prompt, response = prompt_and_response_text(tokenizer, example, chat, system_prompt)
    prompt_ids = encode_prompt(tokenizer, prompt, chat)
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if not chat and tokenizer.eos_token_id is not None:
        response_ids = [*response_ids, tokenizer.eos_token_id]
    if len(prompt_ids) >= max_length:
        raise DataError(
            f"the prompt is {len(prompt_ids)} tokens, longer than model.max_length={max_length} "
            "minus one response token"
        )
    response_ids = response_ids[: max_length - len(prompt_ids)]
    return {
        "input_ids": prompt_ids + response_ids,
        "labels": [IGNORE] * len(prompt_ids) + response_ids,
    }


def pack(examples: Iterable[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """Concatenate whole examples (in order) into rows of at most `max_length` tokens.

    Each row carries `position_ids` that restart at 0 for every example: with no attention mask,
    transformers reads the restarts as sequence boundaries and builds a block-diagonal causal
    mask (checked for Mistral and Llama with sdpa and eager attention, `use_cache=False`). The
    first label of each example is -100, so no loss crosses a boundary either.
    """
    rows: list[dict[str, list[int]]] = []
    row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for example in examples:
        n = len(example["input_ids"])
        if row["input_ids"] and len(row["input_ids"]) + n > max_length:
            rows.append(row)
            row = {"input_ids": [], "labels": [], "position_ids": []}
        row["input_ids"] += example["input_ids"]
        row["labels"] += [IGNORE, *example["labels"][1:]]
        row["position_ids"] += list(range(n))
    if row["input_ids"]:
        rows.append(row)
    return rows


def collate(features: list[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch: labels -100 on padding; packed rows keep `position_ids`, no mask.

    Padding of a packed row gets its own restarting positions, so it is one more isolated
    "sequence" with no labels. `use_cache=False`: training needs no KV cache, and transformers
    only detects packed sequences without one.
    """
    width = max(len(f["input_ids"]) for f in features)
    batch: dict[str, Any] = {
        "input_ids": torch.full((len(features), width), pad_id, dtype=torch.long),
        "labels": torch.full((len(features), width), IGNORE, dtype=torch.long),
    }
    packed = "position_ids" in features[0]
    extra = "position_ids" if packed else "attention_mask"
    batch[extra] = torch.zeros((len(features), width), dtype=torch.long)
    for i, feature in enumerate(features):
        n = len(feature["input_ids"])
        batch["input_ids"][i, :n] = torch.tensor(feature["input_ids"])
        batch["labels"][i, :n] = torch.tensor(feature["labels"])
        if packed:
            batch["position_ids"][i, :n] = torch.tensor(feature["position_ids"])
            batch["position_ids"][i, n:] = torch.arange(width - n)
        else:
            batch["attention_mask"][i, :n] = 1
    batch["use_cache"] = False
    return batch


def render_mask(tokenizer: Any, input_ids: list[int], labels: list[int], pad_id: int | None) -> str:
    """Readable view of one row: trained tokens inside «», prompt tokens plain, padding dropped."""
    parts: list[str] = []
    trained_run: list[int] = []
    plain_run: list[int] = []

    def flush() -> None:
        if plain_run:
            parts.append(tokenizer.decode(plain_run))
            plain_run.clear()
        if trained_run:
            parts.append("«" + tokenizer.decode(trained_run) + "»")
            trained_run.clear()

    for token, label in zip(input_ids, labels, strict=True):
        if label == IGNORE and token == pad_id:
            continue
        if (label != IGNORE and plain_run) or (label == IGNORE and trained_run):
            flush()
        (trained_run if label != IGNORE else plain_run).append(token)
    flush()
    return "".join(parts)
