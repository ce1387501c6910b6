"""Preference pairs built from the domain sets, with the instruction loaders' own readers.

- PubMedQA (`data=pubmedqa_pairs`): chosen = the long answer ending in the gold decision,
  rejected = the same reasoning ending in a wrong decision (one of the other two, seeded): a
  pair that teaches the decision, not the prose.
- MedQuAD (`data=medquad_pairs`): chosen = a question's answer, rejected = the answer to another
  question about the same focus (the next one in the same document whose answer does not also
  answer this question): a pair that teaches answering the question asked, not any text on the
  topic. A document that asks one question twice with two answers gives no pair preferring one
  of them over the other, so no prompt prefers A over B in one row and B over A in another.
"""

from __future__ import annotations

import random
from typing import Annotated

from pydantic import Field

from datamodules.families import PreferenceData, Record, SplitSize
from datamodules.medquad import FOLDERS

SPLITS = ("train", "validation", "test")


class PubMedQAPairs(PreferenceData):
    """PubMedQA PQA-L pairs; splits as `data=pubmedqa` (test = the 500 test PMIDs).

    Attributes:
        root: the data root (`TUNELAB_DATA_DIR`).
        path: the folder holding `ori_pqal.json` and `test_ground_truth.json`.
        val_size: rows (or a fraction < 1) of the 500 non-test PMIDs held out for validation.
    """

    root: str = "data"
    path: str = "pubmedqa"
    val_size: SplitSize = 50

    def answer_options(self) -> list[str] | None:
        """The decisions (yes, no, maybe), scored on test by `callbacks.option_scoring`."""
        from datamodules.pubmedqa import DECISIONS

        return list(DECISIONS)

    def answer_text(self, option: str) -> str:
        """`Answer: <decision>`, as the pairs end (and as `data=pubmedqa` SFT was trained)."""
        return f"Answer: {option}"

    def load(self, seed: int) -> dict[str, list[Record]]:
        """One pair per PMID: the long answer, then `Answer: <gold>` over `Answer: <wrong>`."""
        from datamodules.pubmedqa import DECISIONS, PubMedQA

        source = PubMedQA(
            _target_="datamodules.pubmedqa.PubMedQA",
            name="pubmedqa",
            root=self.root,
            path=self.path,
            val_size=self.val_size,
            append_decision=False,  # responses are the bare long answers; decisions in `answer`
        ).load(seed)
        rng = random.Random(seed)
        pairs: dict[str, list[Record]] = {}
        for split in SPLITS:
            pairs[split] = []
            for record in source[split]:
                gold = record["answer"]
                wrong = rng.choice([d for d in DECISIONS if d != gold])
                reasoning = record["response"]
                pairs[split].append(
                    {
                        "instruction": record["instruction"],
                        "input": record["input"],
                        "chosen": f"{reasoning}\nAnswer: {gold}",
                        "rejected": f"{reasoning}\nAnswer: {wrong}",
                        "answer": gold,
                        "row": record["row"],
                    }
                )
        return pairs


def answers_by_question(pairs: list[Record]) -> dict[str, set[str]]:
    """Every answer a document gives to each of its questions (a question may be asked twice)."""
    answers: dict[str, set[str]] = {}
    for pair in pairs:
        answers.setdefault(pair["question"].strip(), set()).add(pair["answer"])
    return answers


class MedQuADPairs(PreferenceData):
    """MedQuAD pairs, split by document as `data=medquad`; one-answer documents give none.

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
        """Each answered question over another answer in its document (same focus)."""
        from datamodules import common
        from datamodules.medquad import read_medquad, split_of

        documents: dict[str, list[Record]] = {}
        for pair in read_medquad(common.require_local(self.path, self.root), tuple(self.folders)):
            documents.setdefault(pair["file"], []).append(pair)
        records: dict[str, list[Record]] = {split: [] for split in SPLITS}
        for file, pairs in documents.items():
            split = split_of(file, self.val_size, self.test_size)
            answers = answers_by_question(pairs)
            for i, pair in enumerate(pairs):
                own = answers[pair["question"].strip()]  # never reject an answer to this question
                others = pairs[i + 1 :] + pairs[:i]
                other = next((o for o in others if o["answer"] not in own), None)
                if other is None:
                    continue
                records[split].append(
                    {
                        "instruction": pair["question"],
                        "input": "",
                        "chosen": pair["answer"],
                        "rejected": other["answer"],
                        "row": f"{file} QAPair {pair['pid']}",
                    }
                )
        return records
