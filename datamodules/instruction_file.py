"""Instruction data from any CSV/JSON/JSONL/Parquet file(s) or Hugging Face Hub id."""

from __future__ import annotations

from typing import Any

from datamodules.families import InstructionData, Record, RequiredPath, SplitSize

ROW = "__source_row__"  # column holding each example's row in its source file while carving


class InstructionFile(InstructionData):
    """Instruction [+ input] -> response columns from files or the hub.

    Validation and test come from the source's splits when it has them, else they are carved
    from train (seeded, not stratified). Each record's `row` is its 0-based row in the source
    file (the train file for carved examples).

    Attributes:
        root: the data root (`TUNELAB_DATA_DIR`), searched for a relative `path`.
        path: a file, a folder of `train.*`/`validation.*`/`test.*` files, or a hub id.
        hub_id: hub dataset to use when `path` is not found locally.
        instruction_field: column holding the instruction (question).
        input_field: optional column holding extra input (context); null for none.
        response_field: column holding the target response.
        val_size: validation fraction (< 1) or row count carved from train.
        test_size: test fraction or row count carved from train when there is no test split.
    """

    root: str = "data"
    path: RequiredPath
    hub_id: str | None = None
    instruction_field: str = "instruction"
    input_field: str | None = None
    response_field: str = "response"
    val_size: SplitSize = 0.1
    test_size: SplitSize = 0.1

    def load(self, seed: int) -> dict[str, list[Record]]:
        """Train/validation/test records, carving the splits the source lacks."""
        from datasets import DatasetDict

        from datamodules import common

        data = common.load_source(self.path, self.root, self.hub_id)
        fields = {
            "instruction_field": self.instruction_field,
            "response_field": self.response_field,
        }
        if self.input_field:
            fields["input_field"] = self.input_field
        common.check_columns(data, list(fields.values()), list(fields))
        common.check_not_empty(data)
        data = DatasetDict(
            {split: ds.add_column(ROW, list(range(len(ds)))) for split, ds in data.items()}
        )
        data = common.add_eval_splits(data, self.val_size, self.test_size, seed, None)
        return {split: [self._record(row) for row in ds] for split, ds in data.items()}

    def _record(self, row: dict[str, Any]) -> Record:
        return {
            "instruction": row[self.instruction_field],
            "input": row[self.input_field] if self.input_field else "",
            "response": row[self.response_field],
            "row": row[ROW],
        }
