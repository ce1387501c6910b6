"""MedQuAD (Ben Abacha & Demner-Fushman 2019): consumer-health question -> answer pairs."""

from __future__ import annotations

import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

from typing_extensions import override

from datamodules import common
from datamodules.instruction import InstructionDataModule, Record
from tunelab.errors import DataError

FOLDERS = ("5_NIDDK_QA", "6_NINDS_QA")


def normalise(text: str | None) -> str:
    """Collapse the hard line breaks and indentation runs of the XML text into single spaces."""
    return " ".join((text or "").split())


def read_medquad(folder: Path, folders: tuple[str, ...] | list[str] = FOLDERS) -> list[Record]:
    """Every answered QA pair of the XML files in `folder/<each of folders>/`.

    Each record has `question`, `answer`, `file` (the document, for splitting), `focus` and
    `qtype`. Pairs with an empty answer (upstream removed some for copyright) are skipped.
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


class MedQuadDataModule(InstructionDataModule):
    """MedQuAD XML folders under `<root>/<path>` -> question (instruction) -> answer (response).

    The split is by document (XML file) so that answers about one focus topic never leak between
    train and test; `val_size` and `test_size` are fractions of documents.

    Args:
        folders: the MedQuAD collections to read (default NIDDK and NINDS).
        **kwargs: the `InstructionDataModule` arguments.
    """

    def __init__(self, *, folders: list[str] | tuple[str, ...] = FOLDERS, **kwargs):
        super().__init__(**kwargs)
        self.save_hyperparameters(logger=False)

    @override
    def load_records(self) -> dict[str, list[Record]]:
        hp = self.hparams
        folder = common.require_local(hp.path, hp.root)
        if not 0 < hp.val_size < 1 or not 0 < hp.test_size < 1:
            raise DataError("medquad: data.val_size and data.test_size are fractions of files")
        records: dict[str, list[Record]] = {"train": [], "validation": [], "test": []}
        for pair in read_medquad(folder, tuple(hp.folders)):
            split = split_of(pair["file"], hp.val_size, hp.test_size)
            records[split].append(
                {"instruction": pair["question"], "input": "", "response": pair["answer"]}
            )
        return records
