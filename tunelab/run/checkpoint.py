"""Checkpoints: written whole or not at all, read without unpickling, rebuilt into a module.

Every checkpoint a run writes (`resume.ckpt`, `best-*.ckpt`) goes through `SafeCheckpointIO`:
serialised in memory, checked against the free space of its folder, written to a temporary file
there and moved into place, so a full disk leaves the previous file intact and says how much
space is missing. Reading uses `torch.load(weights_only=True)`: tensors and plain data only, no
code from a pickle; a truncated, corrupt or unsafe file is named in a `CorruptFileError`.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunelab.base.errors import ConfigError, CorruptFileError, DiskFullError
from tunelab.base.plugin import Labels
from tunelab.base.schema import ModelConfig, OptimConfig
from tunelab.base.services import provide_checkpoint_loader

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def size_text(n: float) -> str:
    """`12.3 MB`: a byte count for people."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def disk_full(folder: Path, needed: int | None, what: str) -> DiskFullError:
    """The error for `what` not fitting in `folder` (`needed` bytes, when known)."""
    free = shutil.disk_usage(folder).free if folder.exists() else 0
    need = f"needs {size_text(needed)}, " if needed else ""
    return DiskFullError(
        f"disk full: {what} does not fit in {folder} ({need}{size_text(free)} free); what was "
        "saved before is intact. Free space there (or move output_root= to a larger disk) and "
        "rerun the same command: the run resumes from its last checkpoint"
    )


def named_disk_full(err: BaseException, run_dir: Path) -> BaseException:
    """An `OSError` ENOSPC (a report, a log) as the `DiskFullError` that names its folder."""
    if not isinstance(err, OSError) or err.errno not in NO_SPACE:
        return err
    folder = Path(err.filename).parent if err.filename else run_dir
    return disk_full(folder, None, Path(err.filename).name if err.filename else "a file")


def write_atomic(path: str | Path, data: bytes | memoryview) -> None:
    """Write `data` to `path` through a temporary file in the same folder, then rename it.

    Raises:
        DiskFullError: the folder lacks the space (checked first, and on ENOSPC); the previous
            file at `path`, if any, is untouched and the temporary file removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(path.parent).free < len(data):
        raise disk_full(path.parent, len(data), path.name)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno in NO_SPACE:
            raise disk_full(path.parent, len(data), path.name) from None
        raise


@contextmanager
def space_for(folder: Path, what: str, needed: int = 0) -> Iterator[None]:
    """Writing `what` (about `needed` bytes) into `folder`: a full disk is a `DiskFullError`.

    Checked before (free space below `needed`) and after a failure: an `OSError` ENOSPC, or any
    error that leaves less free space than `needed` (safetensors reports a full disk in its own
    exception type).
    """
    if needed and shutil.disk_usage(folder).free < needed:
        raise disk_full(folder, needed, what)
    try:
        yield
    except Exception as err:
        full = isinstance(err, OSError) and err.errno in NO_SPACE
        if not (full or (needed and shutil.disk_usage(folder).free < needed)):
            raise
        raise disk_full(folder, needed, what) from None


def weights_bytes(module: Any, merged: bool = False) -> int:
    """Bytes of the weights an export of `module` writes (only the trained ones for PEFT)."""
    params = list(module.parameters())
    if not merged and getattr(module, "saves_trainable_only", False):
        params = [p for p in params if p.requires_grad]
    return sum(p.numel() * p.element_size() for p in params)


def damage(path: str | Path) -> str | None:
    """Why a checkpoint file cannot be read (truncated, corrupt), or None when it is intact.

    Reads the whole file once and checks the CRC of every record of its zip archive; nothing is
    unpickled.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as err:
        return f"not a whole checkpoint ({type(err).__name__}: {err})"
    return f"record {bad} is corrupt (checksum mismatch)" if bad else None


def read_checkpoint(path: str | Path, map_location: Any = None) -> dict[str, Any]:
    """`torch.load(path, weights_only=True)`, with damaged or unsafe files named.

    `map_location` as `torch.load`'s (None: where the tensors were saved).

    Raises:
        CorruptFileError: the file is truncated or corrupt, or holds pickled objects other than
            tensors and plain data (refused: loading them would run code from the file).
    """
    import torch

    reason = damage(path)
    if reason is None:
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            first = str(err).strip().splitlines()[0][:300]
            raise CorruptFileError(
                f"checkpoint {path} holds objects other than tensors and plain data ({first}); "
                "tunelab loads checkpoints with weights_only=True and never unpickles code. "
                "Load it yourself only if you trust it, and save its state dict as plain data"
            ) from None
        except (RuntimeError, EOFError, ValueError) as err:
            reason = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    raise CorruptFileError(
        f"checkpoint {path} is unreadable: {reason}; it was cut short or damaged (a full disk, "
        "a copy interrupted). A run's own checkpoint: rerun the same command, which sets it "
        "aside and continues from the run's resume.ckpt; otherwise give another checkpoint"
    )


def checkpoint_io() -> Any:
    """A Lightning `CheckpointIO` that writes atomically and reads with weights_only=True."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class SafeCheckpointIO(TorchCheckpointIO):
        """`TorchCheckpointIO` through `write_atomic` and `read_checkpoint`."""

        def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
            import torch

            buffer = io.BytesIO()
            torch.save(checkpoint, buffer)
            write_atomic(path, buffer.getbuffer())

        def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Any = None):
            return read_checkpoint(path, map_location)

    return SafeCheckpointIO()


def load_module(path: str | Path) -> Any:
    """The module a checkpoint was saved from, with its trained weights, in eval mode.

    The checkpoint's hyperparameters hold the task's and the method's configs with their
    `_target_`; they are validated again, the base model rebuilt from `model.name_or_path`, and
    the saved (trainable) tensors loaded on top. The file is read with weights_only=True
    (`read_checkpoint`).
    """
    from tunelab.config.validate import check_plugin
    from tunelab.run.module import FineTuneModule

    saved = read_checkpoint(path, "cpu")
    hparams = saved["hyper_parameters"]
    problems: list[str] = []
    task = check_plugin("task", hparams.get("task"), problems)
    method = check_plugin("method", hparams["method"], problems)
    if task is None or method is None:
        raise ConfigError([f"checkpoint {path}: {p}" for p in problems])
    labels = Labels.model_validate(hparams["labels"]) if hparams.get("labels") else None
    module = FineTuneModule(
        task,
        method,
        ModelConfig.model_validate(hparams["model"]),
        OptimConfig.model_validate(hparams["optim"]),
        labels,
    )
    module.load_state_dict(saved["state_dict"], strict=module.strict_loading)
    return module.eval()


provide_checkpoint_loader(load_module)  # for plug-ins (a distillation teacher's `.ckpt`)
