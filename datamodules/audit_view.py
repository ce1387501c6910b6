"""What a family's datamodule would train on, as rows the audit reads (`tunelab.base.audit`).

`classification_view`, `instruction_view` and `preference_view` turn a datamodule's checked,
subsampled splits into a `View` with token lengths from the run's tokenizer; `cleaned` runs the
audit hook and returns which train rows to keep. `python audit.py` builds the same views.
"""

from __future__ import annotations

from typing import Any

from tunelab.base import prompting
from tunelab.base.audit.table import Split, View

Record = dict[str, Any]  # an instruction record (see datamodules.families.InstructionData)


def classification_view(
    datamodule: Any, data: Any, labels: list[str], measure: bool = True
) -> View:
    """The view of text/labels splits (`labels` as ids into `labels`), lengths in tokens.

    `measure=False` skips the tokenizer (lengths 0): enough for the leak count of every run.
    """
    splits = {}
    for name, ds in data.items():
        texts = list(ds["text"])
        names = [labels[i] for i in ds["labels"]]
        lengths = [0] * len(texts)
        if measure:
            lengths = [len(ids) for ids in datamodule.tokenizer(texts)["input_ids"]]
        rows = [str(i) for i in range(len(texts))]
        splits[name] = Split(texts, names, rows, lengths, classes=names)
    return View(
        "classification",
        splits,
        datamodule.data.name,
        datamodule.tokenizer_name,
        datamodule.max_length,
        labels,
    )


def _token_lengths(datamodule: Any, record: Record, chat: bool) -> tuple[int, int]:
    """Tokens of the rendered prompt and of the response, as `prompting.encode_example` counts."""
    tokenizer = datamodule.tokenizer
    example = {**record, "response": record.get("response") or ""}
    prompt, reply = prompting.prompt_and_response_text(
        tokenizer, example, chat, datamodule.data.system_prompt
    )
    reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
    extra = int(not chat and tokenizer.eos_token_id is not None)  # the plain template's eos
    return len(prompting.encode_prompt(tokenizer, prompt, chat)), len(reply_ids) + extra


def _instruction_split(datamodule: Any, records: list[Record], chat: bool | None) -> Split:
    prompts, responses, rows, lengths, response_lengths = [], [], [], [], []
    for record in records:
        instruction, context = record.get("instruction") or "", record.get("input") or ""
        prompts.append(prompting.user_message(instruction, context))
        responses.append(record.get("response") or "")
        rows.append(str(record.get("row", len(rows))))
        prompt_n, response_n = (0, 0) if chat is None else _token_lengths(datamodule, record, chat)
        lengths.append(prompt_n)
        response_lengths.append(response_n)
    answers = [str(r["answer"]) for r in records if r.get("answer") is not None]
    classes = answers if len(answers) == len(records) else None
    return Split(prompts, responses, rows, lengths, response_lengths, classes)


def instruction_view(
    datamodule: Any, records: dict[str, list[Record]], measure: bool = True
) -> View:
    """The view of instruction records: prompt (instruction + input) -> response.

    `measure=False` skips rendering and tokenising (lengths 0): enough for the leak count.
    """
    return _prompted_view("instruction", datamodule, records, measure, _instruction_split)


def _pair_split(datamodule: Any, records: list[Record], chat: bool | None) -> Split:
    chosen = [{**r, "response": r.get("chosen") or ""} for r in records]
    split = _instruction_split(datamodule, chosen, chat)
    split.rejected = [r.get("rejected") or "" for r in records]
    split.rejected_lengths = [
        0 if chat is None else _token_lengths(datamodule, {**r, "response": rejected}, chat)[1]
        for r, rejected in zip(records, split.rejected, strict=True)
    ]
    return split


def preference_view(
    datamodule: Any, records: dict[str, list[Record]], measure: bool = True
) -> View:
    """The view of preference records: prompt -> chosen over rejected.

    Unpaired (KTO) records are seen as instruction data: prompt -> completion, the class
    `desirable` or `undesirable`. `measure=False` skips tokenising (lengths 0).
    """
    if any("completion" in r for rows in records.values() for r in rows):
        unpaired = {
            split: [
                {**r, "response": r.get("completion") or "", "answer": _desirable(r)} for r in rows
            ]
            for split, rows in records.items()
        }
        return instruction_view(datamodule, unpaired, measure)
    return _prompted_view("preference", datamodule, records, measure, _pair_split)


def _prompted_view(
    kind: str, datamodule: Any, records: dict[str, list[Record]], measure: bool, split: Any
) -> View:
    """A view of prompted records, each split made by `split` (chat template found once)."""
    chat = None
    if measure:
        chat = prompting.uses_chat_template(datamodule.tokenizer, datamodule.data.template)
    splits = {name: split(datamodule, rows, chat) for name, rows in records.items()}
    name, tokenizer = datamodule.data.name, datamodule.tokenizer_name
    return View(kind, splits, name, tokenizer, datamodule.max_length)


def _desirable(record: Record) -> str:
    return "desirable" if record.get("label") else "undesirable"


def cleaned(view: View, data: Any) -> tuple[list[int], dict[str, Any]]:
    """The train positions to keep after `data.drop_*`, and the audit record (see hook)."""
    from tunelab.base.audit import hook

    drop, record = hook.prepare(view, data)
    return [i for i in range(len(view.splits["train"])) if i not in drop], record
