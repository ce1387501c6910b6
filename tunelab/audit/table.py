"""What the audit reads: per split, the compared text, the label and where each row came from."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

WORD = re.compile(r"\w+")


def normalise(text: str) -> str:
    """Lower case, words only, single spaces: `Hi,  there!` and `hi there` are the same text."""
    return " ".join(WORD.findall(text.lower()))


@dataclass
class Split:
    """One split's rows, as the run would see them (after subsampling).

    Attributes:
        texts: what is compared: the classification text, or an instruction's prompt
            (instruction and input).
        labels: the class name, or an instruction's response.
        rows: where each row is in the source, for the report.
        lengths: tokens of the text (classification) or of the rendered prompt (instruction).
        response_lengths: tokens of each response (instruction data only).
        classes: a class per row for the class balance (classification: the label; instruction
            data with a closed answer set: the answer), else None.
    """

    texts: list[str]
    labels: list[str]
    rows: list[str]
    lengths: list[int]
    response_lengths: list[int] | None = None
    classes: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class View:
    """The whole data of one run, as the audit sees it.

    Attributes:
        kind: `classification` (text -> label) or `instruction` (prompt -> response).
        splits: `train`, `validation` and `test`.
        name: the dataset's name (`data.name`).
        model: the base model's folder or hub id (its encoder embeds texts for the label model).
        max_length: `model.max_length`.
        class_names: the class names in id order (classification), else empty.
    """

    kind: Literal["classification", "instruction"]
    splits: dict[str, Split]
    name: str
    model: str
    max_length: int
    class_names: list[str] = field(default_factory=list)

    def eval_splits(self) -> list[str]:
        """The splits other than train."""
        return [s for s in self.splits if s != "train"]
