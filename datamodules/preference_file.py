"""Preference data from any CSV/JSON/JSONL/Parquet file(s) or Hugging Face Hub id."""

from __future__ import annotations

from typing import Any

from datamodules.families import PreferenceData, Record, RequiredPath, SplitSize

ROW = "__source_row__"  # column holding each example's row in its source file while carving


class PreferenceFile(PreferenceData):
    """prompt, chosen, rejected columns (or KTO's prompt, completion, label) from files or the hub.

    Which layout a source has is read from its columns: `chosen_field` present means pairs,
    else `completion_field` and `label_field` (KTO; `data.unpaired=true`). Validation and test
    come from the source's splits when it has them, else they are carved from train (seeded).
    Each record's `row` is its 0-based row in the source file (the train file when carved).

    Attributes:
        root: the data root (`TUNELAB_DATA_DIR`), searched for a relative `path`.
        path: a file, a folder of `train.*`/`validation.*`/`test.*` files, or a hub id.
        hub_id: hub dataset to use when `path` is not found locally.
        prompt_field: column holding the prompt (the user turn).
        chosen_field: column holding the preferred response.
        rejected_field: column holding the dispreferred response.
        completion_field: unpaired data: column holding the completion.
        label_field: unpaired data: column saying whether the completion is desirable.
        val_size: validation fraction (< 1) or row count carved from train.
        test_size: test fraction or row count carved from train when there is no test split.
    """

    root: str = "data"
    path: RequiredPath
    hub_id: str | None = None
    prompt_field: str = "prompt"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    completion_field: str = "completion"
    label_field: str = "label"
    val_size: SplitSize = 0.1
    test_size: SplitSize = 0.1

    def fields(self, paired: bool) -> dict[str, str]:
        """The columns read, by the key that names each."""
        if paired:
            names = ("prompt_field", "chosen_field", "rejected_field")
        else:
            names = ("prompt_field", "completion_field", "label_field")
        return {name: getattr(self, name) for name in names}

    def load(self, seed: int) -> dict[str, list[Record]]:
        """Train/validation/test records, carving the splits the source lacks."""
        from datasets import DatasetDict

        from datamodules import common

        data = common.load_source(self.path, self.root, self.hub_id)
        paired = self.chosen_field in data["train"].column_names
        fields = self.fields(paired)
        common.check_columns(data, list(fields.values()), list(fields))
        common.check_not_empty(data)
        data = DatasetDict(
            {split: ds.add_column(ROW, list(range(len(ds)))) for split, ds in data.items()}
        )
        data = common.add_eval_splits(data, self.val_size, self.test_size, seed, None)
        return {split: [self._record(row, paired) for row in ds] for split, ds in data.items()}

    def _record(self, row: dict[str, Any], paired: bool) -> Record:
        record = {"instruction": row[self.prompt_field], "input": "", "row": row[ROW]}
        if paired:
            return record | {"chosen": row[self.chosen_field], "rejected": row[self.rejected_field]}
        label = row[self.label_field]
        desirable = (
            label.strip().lower() in ("true", "1", "yes") if isinstance(label, str) else label
        )
        return record | {"completion": row[self.completion_field], "label": bool(desirable)}
