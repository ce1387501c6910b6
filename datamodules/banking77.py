"""BANKING77 (Casanueva et al. 2020): 13,083 online-banking queries in 77 intents."""

from __future__ import annotations

import json
from typing import Any

from datamodules.families import ClassificationData, SplitSize


class Banking77(ClassificationData):
    """BANKING77 from a local copy (`train.csv`, `test.csv`, `categories.json`) or the hub.

    The label ids follow `categories.json` (the hub copy's `ClassLabel` order otherwise). There
    is no official validation split: it is carved from train, stratified and seeded.

    Attributes:
        root: the data root (`TUNELAB_DATA_DIR`).
        path: the local copy's folder, under `root` when relative.
        hub_id: the hub dataset loaded when there is no local copy.
        val_size: fraction (< 1) or row count of train carved, stratified, for validation.
    """

    root: str = "data"
    path: str = "banking77"
    hub_id: str = "PolyAI/banking77"
    val_size: SplitSize = 0.1

    def load(self, seed: int) -> tuple[Any, list[str] | None]:
        """Official train/test, validation carved from train; columns `text`, `label`."""
        from datasets import load_dataset

        from datamodules import common

        folder = common.resolve_local(self.path, self.root)
        if folder is None:
            raw = common.load_hub(self.hub_id, self.path, self.root)
            names = None  # the hub copy's ClassLabel names
            raw = common.text_and_label(raw, "text", "label")
        else:
            files = {split: str(folder / f"{split}.csv") for split in ("train", "test")}
            names = json.loads((folder / "categories.json").read_text())
            raw = common.text_and_label(load_dataset("csv", data_files=files), "text", "category")
        return common.classification_splits(raw, names, self.val_size, None, seed)
