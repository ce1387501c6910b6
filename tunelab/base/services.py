"""What plug-ins use from the layers above them, which they cannot import.

A method may need a model that a tunelab run saved (distillation's teacher given as a run's
`.ckpt`): rebuilding it needs the run's LightningModule, so the run layer provides the loader
when it is imported (`tunelab.run.checkpoint`) and a plug-in calls it through here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

_loaders: list[Callable[[str | Path], Any]] = []


def provide_checkpoint_loader(load: Callable[[str | Path], Any]) -> None:
    """Register the function that rebuilds a module from a tunelab checkpoint (the run's)."""
    _loaders[:] = [load]


def load_checkpoint_module(path: str | Path) -> Any:
    """The module a tunelab checkpoint was saved from, with its trained weights (eval mode).

    Raises:
        RuntimeError: when no run layer provided the loader (`import tunelab.run.checkpoint`).
    """
    if not _loaders:
        raise RuntimeError("no checkpoint loader: import tunelab.run.checkpoint first")
    return _loaders[0](path)


def absolute_uri(uri: str) -> str:
    """Make a relative `sqlite:///file.db` absolute (MLflow caches stores by URI string)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri.removeprefix(prefix)).resolve())
    return uri
