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

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from tunelab.config.compose import REPO_ROOT
from tunelab.serving.inference import DECODING

log = logging.getLogger(__name__)
LOGGING_FLAG = "TUNELAB_LOGGING_MODEL"
CODE = ("tunelab", "modules", "datamodules")
REQUIREMENTS = ("torch", "transformers", "peft", "safetensors", "hydra-core", "pydantic", "pandas")


# MLflow suggests type hints on `predict` to infer a signature; tunelab gives the signature
warnings.filterwarnings("ignore", message=".*type hints to the `predict` method")


class TunelabModel(mlflow.pyfunc.PythonModel):
    """A tunelab export served by MLflow; artifact `info` holds its `inference.model_info`."""

    def load_context(self, context: Any) -> None:
        """Load the export folder once."""
        from tunelab.serving.inference import Predictor

        self.info = json.loads(Path(context.artifacts["info"]).read_text())
        self.predictor = None
        if not os.environ.get(LOGGING_FLAG):
            self.predictor = Predictor(context.artifacts["export"], self.info)

    def predict(self, context, model_input, params=None):  # no hints: MLflow reads them
        """Predict for a DataFrame of rows; returns a DataFrame (one row per input row)."""
        import pandas as pd

        rows = pd.DataFrame(model_input).to_dict(orient="records")
        params = {k: v for k, v in (params or {}).items() if k in DECODING}
        if self.predictor is None:  # the input-example check while logging: schema only
            outputs = ["label", "probability"] if self.info["kind"] == "classifier" else []
            return pd.DataFrame(columns=outputs or ["generation"])
        return pd.DataFrame(self.predictor.predict(rows, **params))


def signature(info: dict[str, Any]) -> Any:
    """Input and output columns (and decoding params for generators)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    if info["kind"] == "classifier":
        inputs = Schema([ColSpec("string", "text")])
        outputs = Schema([ColSpec("string", "label"), ColSpec("double", "probability")])
        return ModelSignature(inputs, outputs)
    inputs = Schema([ColSpec("string", "instruction"), ColSpec("string", "input", required=False)])
    params = ParamSchema(
        [
            ParamSpec("max_new_tokens", "long", 64),
            ParamSpec("do_sample", "boolean", False),
            ParamSpec("temperature", "double", 1.0),
        ]
    )
    return ModelSignature(inputs, Schema([ColSpec("string", "generation")]), params)


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def log_model(
    tracking_uri: str, run_id: str, folder: Path, info: dict[str, Any], example: list[dict]
) -> str:
    """Log `folder` as the run's MLflow Model `model`; returns its `runs:/` URI."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(tracking_uri)
    # the logged model belongs to the active experiment: make it the run's
    mlflow.set_experiment(experiment_id=mlflow.get_run(run_id).info.experiment_id)
    # Model.log loads the model to check the input example; that would load the base model
    # once more (minutes for a 7B decoder): while logging, the check predicts without weights
    os.environ[LOGGING_FLAG] = "1"
    try:
        with warnings.catch_warnings():  # "add type hints to predict": the signature is given
            warnings.simplefilter("ignore", UserWarning)
            _log(run_id, folder, info, example)
    finally:
        os.environ.pop(LOGGING_FLAG, None)
    return f"runs:/{run_id}/model"


def _log(run_id: str, folder: Path, info: dict[str, Any], example: list[dict]) -> None:
    import mlflow
    from mlflow.models import Model

    info_file = folder.parent / "model_info.json"
    info_file.write_text(json.dumps(info, indent=2))

    Model.log(
        None,
        name="model",
        flavor=mlflow.pyfunc,
        run_id=run_id,
        python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
        artifacts={"export": str(folder), "info": str(info_file)},
        code_paths=[str(REPO_ROOT / name) for name in CODE],
        signature=signature(info),
        input_example=example[:3] or None,
        pip_requirements=_requirements(),
    )


def register(tracking_uri: str, run_id: str, name: str, alias: str | None = None) -> int:
    """Register a run's `model` under `name` (a new version); point `alias` at it if given."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    version = mlflow.register_model(f"runs:/{run_id}/model", name).version
    if alias:
        MlflowClient(tracking_uri).set_registered_model_alias(name, alias, version)
    return int(version)


def examples(datamodule: Any, kind: str, n: int = 3) -> list[dict[str, str]]:
    """A few test inputs in the model's input format (the logged input example)."""
    if kind == "classifier":
        ids = datamodule.splits["test"][:n]["input_ids"]
        texts = datamodule.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [{"text": text} for text in texts]
    records = getattr(datamodule, "records", {}).get("test", [])[:n]
    return [{"instruction": r["instruction"], "input": r.get("input") or ""} for r in records]


def log_run_model(logger: Any, datamodule: Any, resolved: dict[str, Any], folder: Path) -> None:
    """Log a run's export as its MLflow Model; register it when `logger.register_as` is set."""
    from tunelab.serving.inference import model_info
    from tunelab.tracking.store import absolute_uri

    uri = absolute_uri(resolved["logger"]["tracking_uri"])
    info = model_info(resolved, datamodule.labels)
    log_model(uri, logger.run_id, folder, info, examples(datamodule, info["kind"]))
    name = resolved["logger"].get("register_as")
    if name:
        version = register(uri, logger.run_id, name)
        log.info("registered %s version %d", name, version)
