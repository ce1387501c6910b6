"""Tokenised splits prepared once per machine: built under a file lock, cached, then reused.

Under DDP or torchrun every process sets its datamodule up. `prepare_once` lets the first one
(any rank, any run) build the splits while the others wait on a file lock, then load what it
saved. The cache key (`key_parts`) holds everything that changes the result: the data config
(batching settings aside), the source files' sizes and mtimes (or the hub revision), the
tokenizer, `max_length`, the seed, the datamodules' code and the library versions.

`meta.json` also records the size of every file of the entry: an entry cut short or damaged
since (a full disk, a copy interrupted, a file truncated) is named in a warning and built again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from datasets import DatasetDict, load_from_disk
from filelock import FileLock, Timeout

from datamodules import common
from tunelab.base.errors import CorruptFileError, notice

log = logging.getLogger(__name__)

FORMAT = 2  # bump when what is stored changes meaning
META = "meta.json"  # key parts and extras (labels, records) beside the splits
BATCHING = {"batch_size", "eval_batch_size", "num_workers", "group_by_length"}  # not in the key
TOKENIZER_FILES = {".json", ".txt", ".model", ".jinja"}  # a model folder's files, weights aside
Prepared = tuple[DatasetDict, dict[str, Any]]  # the splits and JSON-able extras


def cache_root() -> Path | None:
    """`TUNELAB_CACHE`, else `~/.cache/tunelab/prepared`; None (no caching) when it is `off`."""
    root = os.environ.get("TUNELAB_CACHE") or "~/.cache/tunelab/prepared"
    return None if root.lower() == "off" else Path(root).expanduser()


def stamps(path: Path, recursive: bool = True, suffixes: set[str] | None = None) -> list:
    """(name, size, mtime_ns) of a file, or of the files in a folder (sorted)."""
    files = [path] if path.is_file() else (path.rglob("*") if recursive else path.glob("*"))
    kept = sorted(f for f in files if f.is_file() and (not suffixes or f.suffix in suffixes))
    return [[str(f.relative_to(path.parent)), f.stat().st_size, f.stat().st_mtime_ns] for f in kept]


def hub_revision(hub_id: str, kind: str = "datasets") -> str | None:
    """The commit of a hub repo (`datasets`, `models`) in the local hub cache, if it is there."""
    from huggingface_hub import constants

    ref = Path(constants.HF_HUB_CACHE) / f"{kind}--{hub_id.replace('/', '--')}" / "refs" / "main"
    return ref.read_text().strip() if ref.is_file() else None


def source_stamp(data: Any) -> Any:
    """The stamps of the data's local files, else its hub id and revision (None: unknown)."""
    path = getattr(data, "path", None)
    if not isinstance(path, str):
        return None
    local = common.resolve_local(path, getattr(data, "root", "data"))
    if local is not None:
        return {"at": str(local.resolve()), "files": stamps(local.resolve())}
    hub = getattr(data, "hub_id", None) or path
    return {"hub": hub, "revision": hub_revision(hub)}


def code_digest(data: Any) -> str:
    """sha256 of the datamodules' and the audit's code and of the loader's own module."""
    files = sorted(Path(__file__).parent.glob("*.py"))
    files += sorted((Path(__file__).parent.parent / "tunelab" / "audit").glob("*.py"))  # cleaning
    files.append(Path(sys.modules[type(data).__module__].__file__ or __file__))
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


def key_parts(datamodule: Any) -> dict[str, Any]:
    """What the prepared splits of a datamodule (`data`, `tokenizer_name`, ...) depend on."""
    data, tokenizer = datamodule.data, datamodule.tokenizer_name
    folder = Path(tokenizer).expanduser()
    files = stamps(folder, False, TOKENIZER_FILES) if folder.is_dir() else None
    return {
        "format": FORMAT,
        "family": type(datamodule).__module__,
        "loader": f"{type(data).__module__}.{type(data).__qualname__}",
        "data": {k: v for k, v in data.dump().items() if k not in BATCHING},
        "source": source_stamp(data),
        "tokenizer": [tokenizer, files or hub_revision(tokenizer, "models")],
        "max_length": datamodule.max_length,
        "seed": datamodule.seed,
        "code": code_digest(data),
        "versions": [version(p) for p in ("datasets", "tokenizers", "transformers")],
    }


def prepare_once(
    parts: dict[str, Any], build: Callable[[], Prepared], root: Path | None
) -> Prepared:
    """The splits of `<root>/<key>/`, built by `build` and saved there by the first process.

    Args:
        parts: what the result depends on (JSON-able); its sha256 is the key.
        build: makes the splits and their extras; its errors propagate, nothing is saved.
        root: the cache folder; None builds without caching.

    Returns:
        The splits (memory-mapped from the cache) and the extras `build` returned.
    """
    if root is None:
        return build()
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    key = hashlib.sha256(blob).hexdigest()
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / f"{key}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process preparing the data in %s", root / key)
        lock.acquire()
    try:
        if not (root / key / META).is_file():
            _save(root, key, parts, build)
        loaded = _load(root / key)
        if isinstance(loaded, str):  # damaged since it was written: built again
            notice(f"prepared data in {root / key} is unreadable ({loaded}): preparing it again")
            _save(root, key, parts, build)
            loaded = _load(root / key)
        if isinstance(loaded, str):
            raise CorruptFileError(f"prepared data in {root / key}: {loaded}; remove that folder")
        log.info("prepared data loaded from %s", root / key)
        return loaded
    finally:
        lock.release()


def _load(folder: Path) -> Prepared | str:
    """The splits and extras saved in `folder`, or why they cannot be read."""
    try:
        meta = json.loads((folder / META).read_text())
        for name, size in meta["files"].items():
            if not (folder / name).is_file() or (folder / name).stat().st_size != size:
                return f"{name} is missing or cut short"
        return load_from_disk(str(folder)), meta["extras"]
    except (OSError, ValueError, KeyError, TypeError) as err:  # ArrowInvalid is a ValueError
        return f"{type(err).__name__}: {str(err)[:200]}"


def _save(root: Path, key: str, parts: dict[str, Any], build: Callable[[], Prepared]) -> None:
    """Build, save into `<key>.tmp`, write the marker, then rename to `<key>` (lock held)."""
    log.info("preparing the data (cached in %s)", root / key)
    tmp, final = root / f"{key}.tmp", root / key
    shutil.rmtree(tmp, ignore_errors=True)  # left by a process that died while saving
    try:
        splits, extras = build()
        splits.save_to_disk(str(tmp))
        files = {str(f.relative_to(tmp)): f.stat().st_size for f in tmp.rglob("*") if f.is_file()}
        meta = {"key": parts, "extras": extras, "files": files}
        (tmp / META).write_text(json.dumps(meta, default=str))
        shutil.rmtree(final, ignore_errors=True)  # an unfinished entry (no marker)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
