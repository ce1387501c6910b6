"""Plain functions the loaders and datamodules share: find the data, load it, check it, split it."""

from __future__ import annotations

import logging
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset

from datamodules import checks
from datamodules.labels import encode_labels, label_names
from tunelab.base.errors import DataError

log = logging.getLogger(__name__)

BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SPLIT_ALIASES = {
    "train": ("train",),
    "validation": ("validation", "val", "valid", "dev"),
    "test": ("test",),
}


def resolve_local(path: str, root: str) -> Path | None:
    """The local file or folder `path` refers to (as given, or under the data root), if any."""
    for candidate in (Path(path).expanduser(), Path(root).expanduser() / path):
        if candidate.exists():
            return candidate
    return None


def not_found(path: str, root: str) -> DataError:
    """The error for data that is neither local nor loadable from the hub."""
    return DataError(
        f"data.path='{path}' was not found: looked at ./{path} and {Path(root) / path} "
        f"(data root from TUNELAB_DATA_DIR or data.root), and it is not a reachable hub id.\n"
        f"Fix: export TUNELAB_DATA_DIR=<folder holding {path}/>, or set data.path to an existing "
        "file or folder."
    )


def require_local(path: str, root: str) -> Path:
    """The local file or folder `path` refers to; `not_found` when there is none."""
    location = resolve_local(path, root)
    if location is None:
        raise not_found(path, root)
    return location


def _split_files(folder: Path) -> dict[str, str]:
    """Map split names to files named train.*, validation.* (val, dev), test.* in a folder."""
    files: dict[str, str] = {}
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            hits = [p for p in sorted(folder.glob(f"{alias}.*")) if p.suffix in BUILDERS]
            if hits:
                files[split] = str(hits[0])
                break
    return files


def load_local(location: Path) -> DatasetDict:
    """Load a CSV/JSON/JSONL/Parquet file, or a folder of split files, into a `DatasetDict`."""
    files = {"train": str(location)} if location.is_file() else _split_files(location)
    if "train" not in files:
        raise DataError(
            f"no train file in {location}: expected train.csv / train.json / train.jsonl / "
            "train.parquet (and optionally validation.* and test.*), or a single data file"
        )
    suffixes = {Path(f).suffix for f in files.values()}
    if len(suffixes) != 1 or next(iter(suffixes)) not in BUILDERS:
        raise DataError(f"split files must share one format of {sorted(BUILDERS)}; got {files}")
    builder = BUILDERS[suffixes.pop()]
    return DatasetDict({split: checks.read_file(builder, split, f) for split, f in files.items()})


def load_hub(hub_id: str, path: str, root: str) -> DatasetDict:
    """Load a dataset from the Hugging Face Hub, turning network failures into a clear error."""
    try:
        return load_dataset(hub_id)
    except Exception as err:
        raise DataError(f"{not_found(path, root)}\nHub load of '{hub_id}' failed: {err}") from err


def load_source(path: str, root: str, hub_id: str | None) -> DatasetDict:
    """`path` as a local file/folder (under `root` when relative), else a hub dataset.

    Only the recognised split names are kept. Raises a `DataError` naming where it looked.
    """
    local = resolve_local(path, root)
    if local is not None:
        data = load_local(local)
    elif hub_id or (path.count("/") == 1 and not path.startswith(".")):
        data = load_hub(hub_id or path, path, root)
    else:
        raise not_found(path, root)
    return DatasetDict({split: ds for split, ds in data.items() if split in SPLIT_ALIASES})


def add_eval_splits(
    data: DatasetDict, val_size: float, test_size: float | None, seed: int, stratify: str | None
) -> DatasetDict:
    """Carve a test split, then a validation split, off train when the source has none."""
    if "test" not in data:
        if test_size is None:
            raise DataError(f"the source has no test split (only {sorted(data)})")
        data["train"], data["test"] = carve(data["train"], test_size, seed, stratify, "test_size")
    if "validation" not in data:
        train = data["train"]
        data["train"], data["validation"] = carve(train, val_size, seed, stratify, "val_size")
    return data


def text_and_label(data: DatasetDict, text_column: str, label_column: str) -> DatasetDict:
    """Only the known splits and the two columns, renamed `text` and `label` (checked first)."""
    data = DatasetDict({s: d for s, d in data.items() if s in SPLIT_ALIASES})
    check_columns(data, [text_column, label_column], ["text_column", "label_column"])
    checks.check_text(data, text_column, "data.text_column")
    checks.check_labels(data, label_column, "data.label_column")
    renames = {text_column: "text", label_column: "label"}
    renames = {old: new for old, new in renames.items() if old != new}
    return DatasetDict(
        {
            s: d.select_columns([text_column, label_column]).rename_columns(renames)
            for s, d in data.items()
        }
    )


def classification_splits(
    data: DatasetDict,
    names: list[str] | None,
    val_size: float,
    test_size: float | None,
    seed: int,
) -> tuple[DatasetDict, list[str]]:
    """Train/validation/test of a `text`/`label` source, and its class names.

    Labels become `ClassLabel` ids first (so errors name the row of the source split and the
    carving can stratify), then a missing test, then validation split is carved off train.

    Args:
        data: the source splits (columns `text` and `label`).
        names: the class names in id order, or None to take them from the train split.
        val_size: fraction or row count of train carved for validation when there is none.
        test_size: the same for test; None when the source must have its own test split.
        seed: the seed of the carving.
    """
    check_not_empty(data)
    names = names or label_names(data, "label")
    checks.check_classes(names, "data.label_column")
    data = encode_labels(data, "label", names, into="label")
    data = add_eval_splits(data, val_size, test_size, seed, "label")
    return DatasetDict({s: data[s] for s in ("train", "validation", "test")}), names


def check_columns(data: DatasetDict, columns: list[str], keys: list[str]) -> None:
    """Every split must have the configured columns; name the override that fixes it."""
    for split, ds in data.items():
        for column, key in zip(columns, keys, strict=True):
            if column not in ds.column_names:
                raise DataError(
                    f"column '{column}' (data.{key}) is missing from the {split} split; "
                    f"its columns are {ds.column_names}. Fix: data.{key}=<one of those>"
                )


def check_not_empty(data: DatasetDict) -> None:
    """Fail on an empty split instead of training or testing on nothing."""
    for split, ds in data.items():
        if len(ds) == 0:
            raise DataError(
                f"the {split} split is empty; add rows to it, or lower data.val_size / "
                "data.test_size so a carved split keeps at least one row"
            )


def carve(
    ds: Dataset, size: float, seed: int, stratify: str | None, key: str = "val_size"
) -> tuple[Dataset, Dataset]:
    """Split `size` (a fraction < 1, or a row count) off `ds`, stratified when possible.

    Raises:
        DataError: naming `data.<key>` when `ds` is too small for the carve.
    """
    size = int(size) if size >= 1 else size
    try:
        parts = ds.train_test_split(test_size=size, seed=seed, stratify_by_column=stratify)
    except ValueError as err:  # too few rows per class for a stratified split
        log.warning("stratified split impossible (%s); splitting at random", err)
        try:
            parts = ds.train_test_split(test_size=size, seed=seed)
        except ValueError as too_small:
            raise checks.carve_error(too_small, ds, size, f"data.{key}") from None
    return parts["train"], parts["test"]


def load_tokenizer(name_or_path: str):
    """Load the tokenizer of `model.name_or_path`, with the fix in the error."""
    from transformers import AutoTokenizer

    from tunelab.base.errors import ModelLoadError

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot load a tokenizer from model.name_or_path='{name_or_path}': "
            f"{str(err).splitlines()[0]}\nFix: a local model folder with tokenizer files, or a "
            "reachable Hugging Face Hub id"
        ) from err
