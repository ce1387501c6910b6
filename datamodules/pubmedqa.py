"""PubMedQA PQA-L (Jin et al. 2019): question + abstract -> conclusion (and yes/no/maybe)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from datamodules.families import InstructionData, Record, SplitSize
from tunelab.base.errors import DataError

# The only fields read from `ori_pqal.json`; the annotators' `reasoning_*_pred` labels are
# annotator output and must never reach the model.
USED_FIELDS = ("QUESTION", "CONTEXTS", "LABELS", "LONG_ANSWER", "final_decision")
DECISIONS = ("yes", "no", "maybe")


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


class PubMedQA(InstructionData):
    """PubMedQA: instruction = question, input = labelled abstract sections, response = long answer.

    The 500 PMIDs of `test_ground_truth.json` are the test split; validation is a seeded random
    `val_size` share of the other 500. Each record's `row` is `PMID <pmid>` (its key in
    `ori_pqal.json`).

    Attributes:
        root: the data root (`TUNELAB_DATA_DIR`).
        path: the folder holding `ori_pqal.json` and `test_ground_truth.json`.
        append_decision: end the response with `Answer: yes|no|maybe` (the gold decision).
        val_size: rows (or a fraction < 1) of the 500 non-test PMIDs held out for validation.
    """

    root: str = "data"
    path: str = "pubmedqa"
    append_decision: bool = True
    val_size: SplitSize = 50

    def _example(self, record: Record) -> Record:
        response = record["answer"]
        if self.append_decision:
            response = f"{response}\nAnswer: {record['decision']}"
        return {
            "instruction": record["question"],
            "input": record["context"],
            "response": response,
            "answer": record["decision"],
            "row": f"PMID {record['pmid']}",
        }

    def answer_options(self) -> list[str] | None:
        """The decisions yes, no and maybe (scored after question + abstract, no long answer)."""
        return list(DECISIONS)

    def answer_text(self, option: str) -> str:
        """`Answer: <decision>` as trained with `append_decision`, else the bare decision."""
        return f"Answer: {option}" if self.append_decision else option

    def load(self, seed: int) -> dict[str, list[Record]]:
        """Train/validation from the non-test PMIDs (seeded shuffle), test = the test PMIDs."""
        from datamodules import common

        pool, test = read_pubmedqa(common.require_local(self.path, self.root))
        random.Random(seed).shuffle(pool)
        n_val = int(self.val_size) if self.val_size >= 1 else round(self.val_size * len(pool))
        return {
            "train": [self._example(r) for r in pool[n_val:]],
            "validation": [self._example(r) for r in pool[:n_val]],
            "test": [self._example(r) for r in test],
        }
