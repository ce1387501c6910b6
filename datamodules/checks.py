"""Named errors for data that cannot be read or is not valid: the file, the row, and the fix.

Reading goes through `datasets`, whose own errors are several layers deep (a pandas or Arrow
error inside a generation error); `read_file` turns every failure into one `DataError` that
names the file, what is wrong with it and what to do. The cell checks run on the source splits
as given, so a row number is a row of the file (0-based, the header not counted).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, load_dataset
from datasets.utils import logging as datasets_logging

from tunelab.base.errors import DataError

NOT_UTF8 = "it is not UTF-8 text; save it as UTF-8 (e.g. iconv -f latin1 -t utf-8 in > out)"


def _root_cause(err: BaseException) -> BaseException:
    """The innermost exception of a chain (`__cause__`, else `__context__`)."""
    seen = {id(err)}
    while (nxt := err.__cause__ or err.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        err = nxt
    return err


def explain(err: BaseException, builder: str) -> str:
    """What is wrong with a file, from the error `datasets` raised while reading it."""
    cause = _root_cause(err)
    text = str(cause).strip().splitlines()[0][:300] if str(cause).strip() else type(cause).__name__
    if isinstance(cause, UnicodeDecodeError) or "utf8" in text.lower().replace("-", ""):
        return f"{NOT_UTF8} ({text})"
    hint = {
        "csv": "check that it is a CSV with a header row, commas, and balanced double quotes",
        "json": "check that it is JSON Lines (one complete JSON object per line, same field types)",
        "parquet": "check that it is a complete Parquet file (was it cut short while copying?)",
    }[builder]
    return f"{text}; {hint}"


def read_file(builder: str, split: str, file: str) -> Dataset:
    """One split file as a `Dataset`; a `DataError` names the file for any reading failure."""
    path = Path(file)
    if path.stat().st_size == 0:
        raise DataError(f"{file} (the {split} split) is empty: it has no header and no rows")
    verbosity = datasets_logging.get_verbosity()
    datasets_logging.set_verbosity(datasets_logging.CRITICAL)  # the error below says it all
    try:
        ds = load_dataset(builder, data_files={split: file}, split=split)
    except Exception as err:  # datasets wraps pandas/Arrow/JSON errors in several layers
        if "corresponds to no data" in str(err):
            problem = "has no rows; add rows under the header"
        else:
            problem = f"cannot be read: {explain(err, builder)}"
        raise DataError(f"{file} (the {split} split) {problem}") from None
    finally:
        datasets_logging.set_verbosity(verbosity)
    if len(ds) == 0:
        raise DataError(f"{file} (the {split} split) has a header but no rows; add rows")
    ds.info.description = str(file)  # where its rows come from, for later messages
    return ds


def where(ds: Dataset, split: str) -> str:
    """`/data/x/train.csv` (the train split), or just the split for data not read from a file."""
    source = ds.info.description
    return f"{source} (the {split} split)" if source else f"the {split} split"


def _blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def check_text(data: DatasetDict, column: str, key: str) -> None:
    """Every text cell holds text: no empty, whitespace-only or missing cell."""
    for split, ds in data.items():
        bad = [row for row, v in enumerate(ds[column]) if _blank(v) or not isinstance(v, str)]
        if bad:
            raise DataError(
                f"empty text in row {bad[0]} of {where(ds, split)}: column '{column}' "
                f"({key}) has {len(bad)} empty or missing cell(s). Fix: fill or drop those rows"
            )


def check_labels(data: DatasetDict, column: str, key: str) -> None:
    """Every label cell holds a label: an empty one would become a class of its own."""
    for split, ds in data.items():
        if isinstance(ds.features[column], ClassLabel):
            continue
        values = ds[column]
        bad = [row for row, v in enumerate(values) if _blank(v)]
        if bad:
            raise DataError(
                f"empty label in row {bad[0]} of {where(ds, split)}: column '{column}' ({key}) "
                f"has {len(bad)} empty or missing label(s); they would train a class of their "
                "own. Fix: label those rows or drop them"
            )
        kinds = {type(v).__name__: row for row, v in enumerate(values)}
        if len(kinds) > 1 or not set(kinds) <= {"str", "int", "float", "bool"}:
            shown = ", ".join(f"{kind} (row {row})" for kind, row in kinds.items())
            raise DataError(
                f"labels of mixed or unusable types in {where(ds, split)}, column '{column}' "
                f"({key}): {shown}. Fix: make every label a string, or every label an integer"
            )


def check_classes(names: list[str], key: str) -> None:
    """A classifier needs at least two classes."""
    if len(names) < 2:
        found = f"'{names[0]}'" if names else "none"
        raise DataError(
            f"the train split has only one class ({found}) in {key}; a classifier needs at "
            f"least two. Fix: add rows of other classes, or point {key} at the label column"
        )


def carve_error(err: ValueError, ds: Dataset, size: float, key: str) -> DataError:
    """The error for a split too small for the requested carve."""
    reason = str(err).splitlines()[0].rstrip(".")
    return DataError(
        f"cannot carve {key}={size:g} off the train split ({len(ds)} row(s)): {reason}. "
        f"Fix: add rows, lower {key} (a fraction < 1 or a row count), or provide the split as "
        "its own file"
    )
