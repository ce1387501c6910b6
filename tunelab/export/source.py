"""Where an export starts: a run folder, an export folder, a run id or a registered model.

Whatever the source, the result is a local export folder (with its `model_info.json`), the
MLflow run it belongs to (when known) and the run's resolved config (for the check rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.base.errors import ModelLoadError
from tunelab.run.resume import STATE_FILE, read_state
from tunelab.serving.inference import INFO_FILE


@dataclass
class Source:
    """A resolved export source.

    Attributes:
        folder: the local export folder (its `model_info.json` says what it holds).
        run_dir: the run folder, when the source is one (exports go below it by default).
        run_id: the MLflow run the export belongs to ("" when unknown).
        config: the run's resolved config (`config.yaml`), or None.
    """

    folder: Path
    run_dir: Path | None = None
    run_id: str = ""
    config: dict[str, Any] | None = None


def _yaml(path: Path) -> dict[str, Any] | None:
    import yaml

    return yaml.safe_load(path.read_text()) if path.is_file() else None


def from_folder(path: Path) -> Source:
    """A run folder (its `export/`) or an export folder (a run folder's `export/`, `merged/`)."""
    if (path / "export" / INFO_FILE).is_file():
        run_dir, folder = path, path / "export"
    elif (path / INFO_FILE).is_file():
        run_dir, folder = (path.parent if (path.parent / STATE_FILE).is_file() else None), path
    else:
        raise ModelLoadError(
            f"source={path}: neither a run folder (with export/{INFO_FILE}) nor an export folder "
            f"(with {INFO_FILE}). Fix: pass outputs/<name>/<time>, a run id or models:/name@alias"
        )
    run_id, config = "", None
    if run_dir is not None:
        run_id = (read_state(run_dir) or {}).get("run_id", "")
        config = _yaml(run_dir / "config.yaml")
    return Source(folder, run_dir, run_id, config)


def from_mlflow(source: str, tracking_uri: str) -> Source:
    """A run id, `runs:/<id>/model` or `models:/<name>@<alias>`: its model, downloaded."""
    import mlflow
    from mlflow.artifacts import download_artifacts

    mlflow.set_tracking_uri(tracking_uri)
    uri = source if source.startswith(("runs:/", "models:/")) else f"runs:/{source}/model"
    try:
        model = Path(download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri))
        run_id = mlflow.models.get_model_info(uri).run_id or ""
    except Exception as err:  # MlflowException, OSError: not in this store
        raise ModelLoadError(
            f"source={source} was not found in the MLflow store {tracking_uri}: "
            f"{str(err).splitlines()[0]}\nFix: check the run id or model name and alias, and "
            "tracking_uri= (or MLFLOW_TRACKING_URI)"
        ) from err
    try:  # the run's config says where its test data is (for the check)
        config = _yaml(Path(download_artifacts(run_id=run_id, artifact_path="config.yaml")))
    except Exception:  # a run without it: the check then asks for check_rows=0
        config = None
    return Source(exported_folder(model), None, run_id, config)


def exported_folder(model: Path) -> Path:
    """The export folder inside a downloaded tunelab MLflow Model (its pyfunc artifact `export`)."""
    mlmodel = _yaml(model / "MLmodel") or {}
    artifacts = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    path = (artifacts.get("export") or {}).get("path")
    if path is None:
        raise ModelLoadError(f"{model} is not a tunelab MLflow Model (no artifact 'export')")
    return model / path


def resolve(source: str, tracking_uri: str) -> Source:
    """The `Source` of `source=`: a local folder first, then the MLflow store."""
    path = Path(source).expanduser()
    if path.is_dir():
        return from_folder(path)
    return from_mlflow(source, tracking_uri)
