"""MedQuAD (Ben Abacha & Demner-Fushman 2019): consumer-health question -> answer pairs."""

from __future__ import annotations

import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import Annotated

from pydantic import Field

from datamodules.families import InstructionData, Record
from tunelab.base.errors import DataError

FOLDERS = ("5_NIDDK_QA", "6_NINDS_QA")


def normalise(text: str | None) -> str:
    """Collapse the hard line breaks and indentation runs of the XML text into single spaces."""
    return " ".join((text or "").split())


def read_medquad(folder: Path, folders: tuple[str, ...] | list[str] = FOLDERS) -> list[Record]:
    """Every answered QA pair of the XML files in `folder/<each of folders>/`.

    Each record has `question`, `answer`, `file` (the document, for splitting), `pid` (the
    pair's id in it), `focus` and `qtype`. Pairs with an empty answer (upstream removed some for
    copyright) are skipped.
    """
    pairs = []
    for name in folders:
        sub = folder / name
        if not sub.is_dir():
            raise DataError(f"MedQuAD folder {sub} not found (data.folders lists {list(folders)})")
        for path in sorted(sub.glob("*.xml")):
            document = ET.parse(path).getroot()
            focus = normalise(document.findtext("Focus"))
            for pair in document.iter("QAPair"):
                question, answer = pair.find("Question"), normalise(pair.findtext("Answer"))
                if question is None or not answer:
                    continue
                pairs.append(
                    {
                        "question": normalise(question.text),
                        "answer": answer,
                        "file": f"{name}/{path.name}",
                        "pid": pair.get("pid", ""),
                        "focus": focus,
                        "qtype": question.get("qtype", ""),
                    }
                )
    return pairs


def split_of(file: str, val_size: float, test_size: float) -> str:
    """Deterministic split of a document from a hash of its file name (same on every machine)."""
    bucket = zlib.crc32(file.encode()) / 2**32
    if bucket < test_size:
        return "test"
    return "validation" if bucket < test_size + val_size else "train"


class MedQuAD(InstructionData):
    """MedQuAD XML folders under `<root>/<path>` -> question (instruction) -> answer (response).

    The split is by document (XML file) so that answers about one focus topic never leak between
    train and test; `val_size` and `test_size` are fractions of documents, assigned by a hash of
    the file name (the same split on every machine, whatever the seed). Each record's `row` is
    `<folder>/<file> QAPair <pid>`.

    Attributes:
        root: the data root (`TUNELAB_DATA_DIR`).
        path: the MedQuAD folder, under `root` when relative.
        folders: the MedQuAD collections to read (default NIDDK and NINDS).
        val_size: fraction of documents for validation.
        test_size: fraction of documents for test.
    """

    root: str = "data"
    path: str = "medquad"
    folders: list[str] = Field(default=list(FOLDERS), min_length=1)
    val_size: Annotated[float, Field(gt=0, lt=1)] = 0.1
    test_size: Annotated[float, Field(gt=0, lt=1)] = 0.1

    def load(self, seed: int) -> dict[str, list[Record]]:
        """Question -> answer records, split by document."""
        from datamodules import common

        folder = common.require_local(self.path, self.root)
        records: dict[str, list[Record]] = {"train": [], "validation": [], "test": []}
        for pair in read_medquad(folder, tuple(self.folders)):
            split = split_of(pair["file"], self.val_size, self.test_size)
            records[split].append(
                {
                    "instruction": pair["question"],
                    "input": "",
                    "response": pair["answer"],
                    "row": f"{pair['file']} QAPair {pair['pid']}",
                }
            )
        return records
