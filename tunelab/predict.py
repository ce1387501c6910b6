"""Batch prediction with a trained model: an export folder, a run's model or a registered model.

    python predict.py source=outputs/quickstart/<time>/export input=texts.csv output=pred.csv
    python predict.py source=runs:/<run_id>/model input=texts.jsonl output=pred.jsonl
    python predict.py source=models:/banking77@champion input=texts.parquet output=pred.parquet

Classifiers write `label` and `probability` per row, generators `generation`; the id column
(`id_column`, default `id`) is kept when the input has it. Both go through
`tunelab.inference.Predictor`, the code the MLflow Model serves with.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tunelab.config import ConfigError
from tunelab.errors import DataError, TunelabError

FORMATS = (".csv", ".jsonl", ".json", ".parquet")


class SourceError(TunelabError):
    """The model to predict with could not be found or loaded."""


@dataclass
class PredictArgs:
    """`key=value` arguments of predict.py."""

    source: str = ""
    input: str = ""
    output: str = ""
    batch_size: int = 32
    text_column: str | None = None
    input_column: str = "input"
    id_column: str = "id"
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    tracking_uri: str | None = None


def parse_args(argv: list[str]) -> PredictArgs:
    """`key=value` pairs -> `PredictArgs`; every problem in one `ConfigError`."""
    import yaml

    known = {f.name: f for f in fields(PredictArgs)}
    values, problems = {}, []
    for arg in argv:
        key, sep, raw = arg.partition("=")
        if not sep or key not in known:
            problems.append(f"'{arg}': expected key=value with key one of {sorted(known)}")
            continue
        values[key] = raw if key in ("source", "input", "output") else yaml.safe_load(raw)
    for key in ("source", "input", "output"):
        if not values.get(key):
            problems.append(f"{key}= is required")
    if values.get("batch_size", 1) is not None and int(values.get("batch_size", 1)) < 1:
        problems.append("batch_size must be >= 1")
    if problems:
        raise ConfigError(problems)
    return PredictArgs(**values)


def read_rows(path: str) -> Any:
    """The input table (CSV, JSON Lines or Parquet) as a DataFrame."""
    import pandas as pd

    file = Path(path)
    if file.suffix not in FORMATS:
        raise DataError(f"input={path}: unknown format; use one of {', '.join(FORMATS)}")
    if not file.is_file():
        raise DataError(f"input={path}: no such file")
    try:
        if file.suffix == ".csv":
            return pd.read_csv(file)
        if file.suffix == ".parquet":
            return pd.read_parquet(file)
        return pd.read_json(file, lines=file.suffix == ".jsonl")
    except Exception as err:  # pandas raises many types for a corrupt file
        raise DataError(f"input={path} is unreadable: {str(err).splitlines()[0]}") from err


def write_rows(frame: Any, path: str) -> None:
    """Write predictions in the format of `path`'s extension."""
    file = Path(path)
    if file.suffix not in FORMATS:
        raise DataError(f"output={path}: unknown format; use one of {', '.join(FORMATS)}")
    file.parent.mkdir(parents=True, exist_ok=True)
    if file.suffix == ".csv":
        frame.to_csv(file, index=False)
    elif file.suffix == ".parquet":
        frame.to_parquet(file, index=False)
    else:
        frame.to_json(file, orient="records", lines=file.suffix == ".jsonl", force_ascii=False)


def _export_info(folder: Path) -> dict[str, Any]:
    """`model_info` of an export folder, from the run folder's config.yaml and label map."""
    from omegaconf import OmegaConf

    from tunelab.inference import model_info

    config = folder.parent / "config.yaml"
    if not config.is_file():
        raise SourceError(
            f"source={folder}: no config.yaml beside this folder; pass a run's export folder "
            "(<run folder>/export), runs:/<run_id>/model or models:/<name>@<alias>"
        )
    label_map = folder.parent / "label_map.json"
    try:
        resolved = OmegaConf.to_container(OmegaConf.load(config), resolve=False)
        labels = list(json.loads(label_map.read_text()).values()) if label_map.exists() else None
        return model_info(resolved, labels)
    except Exception as err:  # YAML/JSON errors, or keys missing from a file cut short
        raise SourceError(
            f"source={folder}: {config.name} or {label_map.name} in {folder.parent} is unreadable "
            f"or incomplete ({type(err).__name__}: {str(err).splitlines()[0][:200]}); the run's "
            "MLflow model holds the same: use runs:/<run_id>/model"
        ) from None


def load_predictor(source: str, tracking_uri: str | None) -> Any:
    """The `Predictor` of an export folder, a `runs:/` or a `models:/` URI."""
    from tunelab.inference import Predictor

    if source.startswith(("runs:/", "models:/")):
        import mlflow

        from tunelab.tracking import absolute_uri

        mlflow.set_tracking_uri(absolute_uri(tracking_uri or default_tracking_uri()))
        try:
            model = mlflow.pyfunc.load_model(source)
        except Exception as err:  # MlflowException, OSError: not found in this store
            raise SourceError(
                f"source={source} was not found in the MLflow store {mlflow.get_tracking_uri()}: "
                f"{str(err).splitlines()[0]}\nFix: check the run id / model name and alias, and "
                "tracking_uri= (or MLFLOW_TRACKING_URI)"
            ) from err
        return model.unwrap_python_model().predictor
    folder = Path(source)
    if not folder.is_dir():
        raise SourceError(
            f"source={source}: unknown source; expected an export folder, runs:/<run_id>/model "
            "or models:/<name>@<alias> (or models:/<name>/<version>)"
        )
    return Predictor(folder, _export_info(folder))


def default_tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else the `sqlite:///mlflow.db` tunelab runs write by default."""
    import os

    return os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")


def _columns(frame: Any, args: PredictArgs, kind: str) -> list[dict[str, Any]]:
    """Rows renamed to the model's input columns (`text`, or `instruction` + `input`)."""
    main = "text" if kind == "classifier" else "instruction"
    column = args.text_column or main
    if column not in frame.columns:
        raise DataError(
            f"input={args.input} has no '{column}' column (columns: {list(frame.columns)}); "
            f"set text_column=<the column holding the {main}>"
        )
    renamed = {column: main}
    if kind == "generator" and args.input_column in frame.columns:
        renamed[args.input_column] = "input"
    rows = frame[list(renamed)].rename(columns=renamed)
    return rows.fillna("").astype(str).to_dict(orient="records")  # an empty cell: no input


def predict(args: PredictArgs) -> tuple[Any, float]:
    """Predict every input row in batches; returns the output table and rows per second."""
    import pandas as pd
    from rich.progress import Progress
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights": the progress bar here is ours
    if Path(args.output).suffix not in FORMATS:
        raise DataError(f"output={args.output}: unknown format; use one of {', '.join(FORMATS)}")
    frame = read_rows(args.input)
    predictor = load_predictor(args.source, args.tracking_uri)
    rows = _columns(frame, args, predictor.info["kind"])
    decoding = {
        "max_new_tokens": args.max_new_tokens,
        "do_sample": args.do_sample,
        "temperature": args.temperature,
    }
    outputs: list[dict[str, Any]] = []
    started = time.perf_counter()
    with Progress(transient=True) as progress:
        task = progress.add_task("predicting", total=len(rows))
        for start in range(0, len(rows), args.batch_size):
            batch = rows[start : start + args.batch_size]
            outputs += predictor.predict(batch, **decoding)
            progress.advance(task, len(batch))
    rate = len(rows) / max(time.perf_counter() - started, 1e-9)
    result = pd.DataFrame(outputs)
    if args.id_column in frame.columns:
        result.insert(0, args.id_column, frame[args.id_column].to_numpy())
    return result, rate
