"""What the audit reads: per split, the compared text, the label and where each row came from."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

WORD = re.compile(r"\w+")
SEP = "\x1f"  # between a pair's chosen and rejected response in `Split.targets`


def normalise(text: str) -> str:
    """Lower case, words only, single spaces: `Hi,  there!` and `hi there` are the same text."""
    return " ".join(WORD.findall(text.lower()))


@dataclass
class Split:
    """One split's rows, as the run would see them (after subsampling).

    Attributes:
        texts: what is compared: the classification text, or an instruction's (a pair's)
            prompt (instruction and input).
        labels: the class name, an instruction's response, or a pair's chosen response.
        rows: where each row is in the source, for the report.
        lengths: tokens of the text (classification) or of the rendered prompt (decoders).
        response_lengths: tokens of each response (chosen for pairs; decoder data only).
        classes: a class per row for the class balance (classification: the label; instruction
            data with a closed answer set: the answer), else None.
        rejected: a pair's rejected response (preference data only), else None.
        rejected_lengths: tokens of each rejected response (preference data only).
    """

    texts: list[str]
    labels: list[str]
    rows: list[str]
    lengths: list[int]
    response_lengths: list[int] | None = None
    classes: list[str] | None = None
    rejected: list[str] | None = None
    rejected_lengths: list[int] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def targets(self) -> list[str]:
        """What a row answers: the label (response), or a pair's chosen and rejected."""
        if self.rejected is None:
            return self.labels
        pairs = zip(self.labels, self.rejected, strict=True)
        return [f"{normalise(chosen)}{SEP}{normalise(rejected)}" for chosen, rejected in pairs]

    def compared(self) -> list[str]:
        """What near duplicates compare: the text, or a pair's prompt, chosen and rejected."""
        if self.rejected is None:
            return self.texts
        parts = zip(self.texts, self.labels, self.rejected, strict=True)
        return ["\n".join(part) for part in parts]


@dataclass
class View:
    """The whole data of one run, as the audit sees it.

    Attributes:
        kind: `classification` (text -> label), `instruction` (prompt -> response) or
            `preference` (prompt -> chosen over rejected).
        splits: `train`, `validation` and `test`.
        name: the dataset's name (`data.name`).
        model: the base model's folder or hub id (its encoder embeds texts for the label model).
        max_length: `model.max_length`.
        class_names: the class names in id order (classification), else empty.
    """

    kind: Literal["classification", "instruction", "preference"]
    splits: dict[str, Split]
    name: str
    model: str
    max_length: int
    class_names: list[str] = field(default_factory=list)

    def eval_splits(self) -> list[str]:
        """The splits other than train."""
        return [s for s in self.splits if s != "train"]
