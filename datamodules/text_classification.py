"""Text classification from any CSV/JSON/JSONL/Parquet file(s) or Hugging Face Hub id."""

from __future__ import annotations

from typing import Any

from datamodules.families import ClassificationData, RequiredPath, SplitSize


class TextClassification(ClassificationData):
    """A text column and a label column (strings, ints or a `ClassLabel`) from files or the hub.

    Validation comes from a `validation` split when the source has one, else it is carved from
    train (stratified, seeded); the same for test. Class names are the train split's labels
    (sorted strings, `0..max` for ints, or the `ClassLabel` names).

    Attributes:
        root: the data root (`TUNELAB_DATA_DIR`), searched for a relative `path`.
        path: a file, a folder of `train.*`/`validation.*`/`test.*` files, or a hub id.
        hub_id: hub dataset to use when `path` is not found locally.
        text_column: the input text column.
        label_column: the label column.
        val_size: validation fraction (< 1) or row count carved from train.
        test_size: test fraction or row count carved from train when there is no test split.
        out_of_scope: the label meaning "none of the intents" (reported apart, as CLINC150's
            `oos`: in-scope accuracy and out-of-scope recall; out-of-scope detection), or null.
    """

    root: str = "data"
    path: RequiredPath
    hub_id: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    val_size: SplitSize = 0.1
    test_size: SplitSize = 0.1
    out_of_scope: str | None = None

    def out_of_scope_label(self) -> str | None:
        """`out_of_scope`, when set."""
        return self.out_of_scope

    def load(self, seed: int) -> tuple[Any, list[str] | None]:
        """The source's splits, with validation/test carved from train when missing."""
        from datamodules import common

        raw = common.load_source(self.path, self.root, self.hub_id)
        raw = common.text_and_label(raw, self.text_column, self.label_column)
        return common.classification_splits(raw, None, self.val_size, self.test_size, seed)
