"""Where a preference run's SFT adapter (its reference) comes from: a folder or MLflow.

`task.reference_adapter` may name:

- a run folder, its `export/` folder, or a glob of them (`outputs/lora_mistral/*`: the newest);
- an MLflow run id (the run's logged model `model`), `runs:/<run_id>/<path>`, or a registered
  model, `models:/<name>@<alias>` or `models:/<name>/<version>`, looked up in
  `task.tracking_uri` (the run's `logger.tracking_uri` by default) and downloaded with MLflow's
  public API (`mlflow.artifacts.download_artifacts`). A tunelab MLflow Model wraps the export
  folder as its pyfunc artifact `export`; that folder is the adapter.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from tunelab.base.errors import ModelLoadError
from tunelab.base.services import mlflow_artifact_uri

MLFLOW_PREFIXES = ("runs:/", "models:/")
RUN_ID = re.compile(r"^[0-9a-f]{32}$")  # what MLflow's run ids look like
ADAPTER_FILE = "adapter_config.json"


def in_mlflow(source: str) -> bool:
    """Whether `source` names an MLflow run or model rather than a local folder."""
    return source.startswith(MLFLOW_PREFIXES) or bool(RUN_ID.match(source))


def adapter_folder(path: str) -> Path | None:
    """The folder holding `adapter_config.json`: `path` or its `export/` (a run folder).

    A glob (`outputs/lora_mistral/*`) picks the newest match; None when nothing matches.
    """
    matches = sorted(glob.glob(str(Path(path).expanduser())), key=os.path.getmtime, reverse=True)
    for match in matches:
        found = inner_adapter(Path(match))
        if found is not None:
            return found
    return None


def inner_adapter(folder: Path) -> Path | None:
    """The adapter in `folder`: itself, its `export/`, or a tunelab MLflow Model's `export`."""
    candidates = [folder, folder / "export"]
    mlmodel = folder / "MLmodel"
    if mlmodel.is_file():
        import yaml

        flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {})
        artifact = flavors.get("python_function", {}).get("artifacts", {}).get("export", {})
        if artifact.get("path"):
            candidates.insert(0, folder / artifact["path"])
    return next((c for c in candidates if (c / ADAPTER_FILE).is_file()), None)


def download(source: str, tracking_uri: str | None) -> Path:
    """The adapter folder of an MLflow run id, `runs:/` or `models:/` URI, downloaded."""
    from mlflow.artifacts import download_artifacts

    try:
        uri = mlflow_artifact_uri(source, tracking_uri)
        local = download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri)
    except Exception as err:  # MlflowException, OSError: not in this store
        raise ModelLoadError(
            f"task.reference_adapter={source} was not found in the MLflow store "
            f"{tracking_uri or '(MLflow default)'}: {str(err).splitlines()[0]}. Fix: check the "
            "run id or the model's name and alias (models:/<name>@<alias> or "
            "models:/<name>/<version>), and task.tracking_uri (default: logger.tracking_uri)"
        ) from err
    folder = inner_adapter(Path(local))
    if folder is None:
        raise ModelLoadError(
            f"task.reference_adapter={source}: {uri} holds no PEFT adapter ({ADAPTER_FILE}); "
            "name the run or model of an SFT run with a PEFT method (e.g. method=lora)"
        )
    return folder


def locate(source: str, tracking_uri: str | None) -> Path:
    """The local adapter folder of `task.reference_adapter` (downloaded when in MLflow)."""
    if in_mlflow(source) and not Path(source).exists():
        return download(source, tracking_uri)
    folder = adapter_folder(source)
    if folder is None:
        raise ModelLoadError(
            f"task.reference_adapter: no PEFT adapter at '{source}'; give the folder (or "
            "export/ folder) of an SFT run with a PEFT method, e.g. outputs/lora_mistral/"
            "<timestamp> after python run.py experiment=lora_mistral, its MLflow run id, or "
            "models:/<name>@<alias>"
        )
    return folder
