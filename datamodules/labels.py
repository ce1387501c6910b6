"""Turn a label column (strings, ints or a `ClassLabel`) into checked integer ids."""

from __future__ import annotations

from datasets import ClassLabel, DatasetDict

from tunelab.errors import DataError


def label_names(data: DatasetDict, column: str) -> list[str]:
    """Class names in id order: a `ClassLabel`'s names, sorted strings, or `0..max` for ints."""
    feature = data["train"].features[column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = set(data["train"][column])
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return [str(i) for i in range(max(values) + 1)]
    return sorted(str(v) for v in values)


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
        is_ids = isinstance(ds.features[column], ClassLabel) or ds.features[
            column
        ].dtype.startswith("int")
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
