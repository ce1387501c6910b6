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


def mlflow_artifact_uri(source: str, tracking_uri: str | None) -> str:
    """Where a `runs:/<id>/<name>` or `models:/<name>@<alias>|/<version>` source's files are.

    Looked up in `tracking_uri`'s store and registry.

    Resolved here with an `MlflowClient` of that store: MLflow resolves `models:/` names, and the
    logged models behind `runs:/<id>/<name>` (MLflow 3 keeps them apart from the run's
    artifacts), in the process-wide store (the current run's), whatever store is passed to it.
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if source.startswith("models:/"):
        spec = source.removeprefix("models:/")
        if "@" in spec:
            name, alias = spec.split("@", 1)
            version = client.get_model_version_by_alias(name, alias).version
        else:
            name, _, version = spec.partition("/")
        return client.get_model_version_download_uri(name, version)
    run_id, _, name = source.removeprefix("runs:/").partition("/")
    run = client.get_run(run_id)
    name = name.strip("/") or "model"
    query = f"source_run_id = '{run_id}' AND name = '{name}'"
    for model in client.search_logged_models([run.info.experiment_id], filter_string=query):
        return model.artifact_location
    return f"{run.info.artifact_uri.rstrip('/')}/{name}"  # an artifact of the run itself
