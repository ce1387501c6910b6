"""PubMedQA PQA-L (Jin et al. 2019): question + abstract -> conclusion (and yes/no/maybe)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from typing_extensions import override

from datamodules import common
from datamodules.instruction import InstructionDataModule, Record
from tunelab.errors import DataError

# The only fields read from `ori_pqal.json`; the annotators' `reasoning_*_pred` labels are
# annotator output and must never reach the model.
USED_FIELDS = ("QUESTION", "CONTEXTS", "LABELS", "LONG_ANSWER", "final_decision")


def _record(pmid: str, entry: dict) -> Record:
    sections = zip(entry["LABELS"], entry["CONTEXTS"], strict=True)
    return {
        "pmid": pmid,
        "question": entry["QUESTION"],
        "context": "\n".join(f"{label}: {text}" for label, text in sections),
        "answer": entry["LONG_ANSWER"],
        "decision": entry["final_decision"],
    }


def read_pubmedqa(folder: Path) -> tuple[list[Record], list[Record]]:
    """(train pool, test) records of PQA-L; test = the PMIDs of `test_ground_truth.json`."""
    try:
        entries = json.loads((folder / "ori_pqal.json").read_text())
        test_ids = set(json.loads((folder / "test_ground_truth.json").read_text()))
    except FileNotFoundError as err:
        raise DataError(
            f"PubMedQA files missing in {folder}: need ori_pqal.json and test_ground_truth.json"
        ) from err
    pool, test = [], []
    for pmid, entry in sorted(entries.items()):
        kept = {key: entry[key] for key in USED_FIELDS}
        (test if pmid in test_ids else pool).append(_record(pmid, kept))
    return pool, test


class PubMedQADataModule(InstructionDataModule):
    """PubMedQA: instruction = question, input = labelled abstract sections, response = long answer.

    The 500 PMIDs of `test_ground_truth.json` are the test split; validation is a seeded random
    `val_size` share of the other 500.

    Args:
        append_decision: end the response with `Answer: yes|no|maybe` (the gold decision).
        **kwargs: the `InstructionDataModule` arguments.
    """

    def __init__(self, *, append_decision: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.save_hyperparameters(logger=False)

    def _example(self, record: Record) -> Record:
        response = record["answer"]
        if self.hparams.append_decision:
            response = f"{response}\nAnswer: {record['decision']}"
        return {"instruction": record["question"], "input": record["context"], "response": response}

    @override
    def load_records(self) -> dict[str, list[Record]]:
        hp = self.hparams
        folder = common.require_local(hp.path, hp.root)
        pool, test = read_pubmedqa(folder)
        random.Random(hp.seed).shuffle(pool)
        n_val = int(hp.val_size) if hp.val_size >= 1 else round(hp.val_size * len(pool))
        return {
            "train": [self._example(r) for r in pool[n_val:]],
            "validation": [self._example(r) for r in pool[:n_val]],
            "test": [self._example(r) for r in test],
        }
