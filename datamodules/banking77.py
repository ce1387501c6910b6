"""BANKING77 (Casanueva et al. 2020): 13,083 online-banking queries in 77 intents."""

from __future__ import annotations

import json

from datasets import DatasetDict, load_dataset
from typing_extensions import override

from datamodules import common
from datamodules.text_classification import TextClassificationDataModule


class Banking77DataModule(TextClassificationDataModule):
    """BANKING77 from a local copy (`train.csv`, `test.csv`, `categories.json`) or the hub.

    The label ids follow `categories.json` (the hub copy's `ClassLabel` order otherwise). There
    is no official validation split: it is carved from train, stratified and seeded.
    """

    @override
    def load_raw(self) -> tuple[DatasetDict, list[str] | None]:
        hp = self.hparams
        folder = common.resolve_local(hp.path, hp.root)
        if folder is None:
            data = common.load_hub(hp.hub_id or "PolyAI/banking77", hp.path, hp.root)
            if "label" in data["train"].column_names and hp.label_column != "label":
                data = data.rename_column("label", hp.label_column)
            return data, None
        files = {split: str(folder / f"{split}.csv") for split in ("train", "test")}
        names = json.loads((folder / "categories.json").read_text())
        return load_dataset("csv", data_files=files), names
