"""Turn a label column (strings, ints or a `ClassLabel`) into checked integer ids."""

from __future__ import annotations

from typing import Any

from datasets import ClassLabel, DatasetDict

from tunelab.base.errors import DataError


def label_names(data: DatasetDict, column: str) -> list[str]:
    """Class names in id order: a `ClassLabel`'s names, else the train split's distinct values.

    Integer labels are sorted as numbers and named by their value: 1001/2002/3003 are three
    classes "1001", "2002", "3003" (not ids into a 3,004-class head).
    """
    feature = data["train"].features[column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = set(data["train"][column])
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return [str(v) for v in sorted(values)]
    return sorted(str(v) for v in values)


def _ids_given(feature: Any, names: list[str]) -> bool:
    """Whether integer labels are ids into `names`, not values named by `label_names`.

    They are ids for a `ClassLabel`, or when the names are not numbers (a loader's class list).
    """
    if isinstance(feature, ClassLabel):
        return True
    if not str(getattr(feature, "dtype", "")).startswith("int"):
        return False
    return not all(name.lstrip("-").isdigit() for name in names)


def encode_labels(
    data: DatasetDict, column: str, names: list[str], into: str = "labels"
) -> DatasetDict:
    """Replace `column` by a `ClassLabel` column `into` of ids in `range(len(names))`.

    Every row is checked; row numbers in errors are positions in the splits as given.

    Raises:
        DataError: for a label that is not one of `names` or an integer id out of range.
    """
    index = {name: i for i, name in enumerate(names)}
    encoded = {}
    for split, ds in data.items():
        is_ids = _ids_given(ds.features[column], names)
        values = ds[column]
        ids = [v if is_ids else index.get(str(v), -1) for v in values]
        bad = [
            (row, v)
            for row, (v, i) in enumerate(zip(values, ids, strict=True))
            if not 0 <= i < len(names)
        ]
        if bad:
            row, value = bad[0]
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise DataError(
                f"label {value!r} in row {row} of the {split} split is out of range: the label "
                f"set has {len(names)} classes ({shown}) and {len(bad)} row(s) fall outside it. "
                "Fix the data, or its label list."
            )
        ds = ds.remove_columns(column).add_column(into, ids)
        encoded[split] = ds.cast_column(into, ClassLabel(names=names))
    return DatasetDict(encoded)
