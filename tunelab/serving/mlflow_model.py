"""Each run's export as an MLflow Model (a pyfunc), optionally registered in the Model Registry.

The pyfunc wraps the export folder (artifact `export`) with `tunelab.serving.inference.Predictor`,
so `mlflow.pyfunc.load_model`, `mlflow models serve` and `predict.py` predict the same way:

- classifiers take a `text` column and return `label` and `probability`;
- generators take `instruction` (and optional `input`) and return `generation`; decoding is
  set per request with the params `max_new_tokens`, `do_sample`, `temperature`.

tunelab's own packages travel inside the model (`code/`), so the model loads outside this
repository. Adapters (LoRA, IA3, prompts, bottleneck adapters) rebuild their base from the
training run's `model.name_or_path`, which must be reachable where the model is loaded.
"""

from __future__ import annotations

import logging
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from tunelab.config.compose import REPO_ROOT

log = logging.getLogger(__name__)
LOGGING: ContextVar[bool] = ContextVar("tunelab_logging_model", default=False)
CODE = ("tunelab", "tasks", "modules", "datamodules")
REQUIREMENTS = ("torch", "transformers", "peft", "safetensors", "hydra-core", "pydantic", "pandas")


class TunelabModel(mlflow.pyfunc.PythonModel):
    """A tunelab export served by MLflow: artifact `export`, whose `model_info.json` says all."""

    def load_context(self, context: Any) -> None:
        """Load the export folder once."""
        from tunelab.serving.inference import Predictor, plugin, read_info

        folder = Path(context.artifacts["export"])
        self.info = read_info(folder)
        self.outputs = list(plugin("task", self.info["task"]).output_columns)
        self.predictor = None if LOGGING.get() else Predictor(folder, self.info)

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        """Predict for a DataFrame of rows; returns a DataFrame (one row per input row).

        `model_input` is typed as a DataFrame, which MLflow takes as "no signature inference":
        the signature is the task's own.
        """
        rows = pd.DataFrame(model_input).to_dict(orient="records")
        if self.predictor is None:  # the input-example check while logging: schema only
            return pd.DataFrame(columns=self.outputs)
        return pd.DataFrame(self.predictor.predict(rows, **dict(params or {})))


def _requirements(extra: list[str]) -> list[str]:
    """The pinned requirements, plus an export's runtime (`requirements` in its info)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in (*REQUIREMENTS, *extra):
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def log_model(
    tracking_uri: str, run_id: str, folder: Path, example: list[dict], name: str = "model"
) -> str:
    """Log `folder` as the run's MLflow Model `name`; returns its `runs:/` URI."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(tracking_uri)
    # the logged model belongs to the active experiment: make it the run's
    mlflow.set_experiment(experiment_id=mlflow.get_run(run_id).info.experiment_id)
    # Model.log loads the model in this process to check the input example; that would load
    # the base model once more (minutes for a 7B decoder): while logging, it predicts no weights
    token = LOGGING.set(True)
    try:
        _log(run_id, folder, example, name)
    finally:
        LOGGING.reset(token)
    return f"runs:/{run_id}/{name}"


def _log(run_id: str, folder: Path, example: list[dict], name: str) -> None:
    import mlflow
    from mlflow.models import Model

    from tunelab.serving.inference import plugin, read_info

    info = read_info(folder)

    Model.log(
        None,
        name=name,
        flavor=mlflow.pyfunc,
        run_id=run_id,
        python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
        artifacts={"export": str(folder)},
        code_paths=[str(REPO_ROOT / package) for package in CODE],
        signature=plugin("task", info["task"]).signature(),
        input_example=example[:3] or None,
        pip_requirements=_requirements(info.get("requirements", [])),
    )


def register(
    tracking_uri: str, run_id: str, name: str, alias: str | None = None, model: str = "model"
) -> int:
    """Register a run's MLflow Model `model` under `name` (a new version); `alias` points at it."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    version = mlflow.register_model(f"runs:/{run_id}/{model}", name).version
    if alias:
        MlflowClient(tracking_uri).set_registered_model_alias(name, alias, version)
    return int(version)


def log_run_model(logger: Any, run: Any, folder: Path, example: list[dict]) -> None:
    """Log a run's export folder as its MLflow Model; register it when `logger.register_as` is set.

    Args:
        logger: the run's MLflow logger.
        run: the run's validated config.
        folder: the export folder (with its `model_info.json`).
        example: a few inputs in the prediction format.
    """
    from tunelab.tracking.store import absolute_uri

    uri = absolute_uri(run.logger.tracking_uri)
    log_model(uri, logger.run_id, folder, example)
    name = run.logger.register_as
    if name:
        version = register(uri, logger.run_id, name)
        log.info("registered %s version %d", name, version)
