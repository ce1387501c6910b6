"""What a run shows in MLflow's runs table: its name, params, description, model and datasets.

The full resolved config is the run's `config.yaml` artifact; params are the hyperparameters
worth comparing (no `_target_` class paths, no absolute paths, no console settings).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

# keys that say nothing about the model or how it trained
NOISE = {
    "name",
    "task.callbacks",
    "output_root",
    "data.root",
    "data.num_workers",
    "data.eval_batch_size",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "trainer.num_sanity_val_steps",
    "trainer.limit_val_batches",
    "trainer.limit_test_batches",
    "trainer.fast_dev_run",
    "trainer.deterministic",
    "model.gradient_checkpointing",
    "trainer.num_nodes",
    "trainer.checkpoint_every_n_steps",
    "trainer.check_val_every_n_epoch",
    "trainer.limit_train_batches",
    "data.group_by_length",
    "optim.betas",
}
QUANT_DETAILS = ("model.double_quant", "model.compute_dtype", "model.quant_storage")
GENERIC_FOLDERS = {"model", "models", "export", "merged", "merged_model", "weights", "checkpoint"}
KEPT_GROUPS = ("task", "method", "optim", "model", "data", "trainer", "seed")
NAME_KEYS = ("method.r", "optim.lr")  # always in a run name when the method has them
HYPER_PREFIXES = (
    "method.",
    "optim.",
    "task.label_smoothing",
    "model.quantize",
    "trainer.max_epochs",
    "seed",
)
SHORT = {"trainer.max_epochs": "epochs", "model.quantize": "quant"}


# MLflow 3's UI opens experiments in its GenAI view (traces) unless told otherwise
UI_VIEW = "?workflowType=machine_learning"
UI = "http://127.0.0.1:5000"


def run_link(experiment_id: str, run_id: str | None = None, ui: str = UI) -> str:
    """The MLflow UI address of a run (or of its experiment), in the model-training view."""
    path = f"{ui}/#/experiments/{experiment_id}"
    return f"{path}/runs/{run_id}{UI_VIEW}" if run_id else f"{path}/runs{UI_VIEW}"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"method": {"r": 8}}` -> `{"method.r": 8}` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat |= flatten(value, path)
        else:
            flat[path] = value
    return flat


def model_name(name_or_path: str) -> str:
    """A hub id as is; a local folder by its name (not an absolute path inside a venv)."""
    path = Path(name_or_path).expanduser()
    if not (name_or_path.startswith(("/", ".", "~")) or path.exists()):
        return name_or_path
    parts = path.resolve().parts
    cached = [p for p in parts if p.startswith("models--")]  # the Hugging Face cache
    if cached:
        return cached[-1].removeprefix("models--").replace("--", "/")
    if parts[-1] in GENERIC_FOLDERS and len(parts) > 1:  # .../all_minilm/model
        return "/".join(parts[-2:])
    return parts[-1]


def run_params(resolved: dict[str, Any]) -> dict[str, Any]:
    """The meaningful params of a run (about 30-40 keys)."""
    flat = flatten({k: v for k, v in resolved.items() if k in KEPT_GROUPS})
    params = {}
    for key, value in flat.items():
        if key in NOISE or key.endswith("_target_") or (value is None and key != "model.quantize"):
            continue
        if key in QUANT_DETAILS and flat.get("model.quantize") is None:
            continue  # settings of a quantisation that is off
        if key.startswith("data.") and value is False:
            continue  # data switches left off (audit, drop_*, refit): in config.yaml
        if isinstance(value, str) and value.startswith("/"):
            continue  # absolute paths: machine-specific, in config.yaml
        params[key] = value
    params["model.name_or_path"] = model_name(str(resolved["model"]["name_or_path"]))
    return params


def _short(value: Any) -> str:
    if isinstance(value, float) and 0 < value < 0.1:  # 3e-4, 2.5e-3: two digits at most
        text = f"{value:.0e}" if float(f"{value:.0e}") == value else f"{value:.1e}"
        return text.replace("e-0", "e-")
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def recipe_params(experiment: str) -> dict[str, Any] | None:
    """The flattened config of experiment `experiment` as written (None when there is none)."""
    from omegaconf import OmegaConf

    from tunelab.config.compose import available, compose

    if experiment not in available("experiment"):
        return None
    try:
        return flatten(OmegaConf.to_container(compose([f"experiment={experiment}"]), resolve=True))
    except Exception:  # a name is cosmetic: never fail a run over it
        return None


def split_recipe(name: str) -> tuple[str, str | None]:
    """`quickstart_tickets` -> (`quickstart`, `tickets`): the recipe a run's name starts with.

    A run on data other than its recipe's is named `<recipe>_<data>`; other names come back
    whole, with no data label.
    """
    from tunelab.config.compose import available

    recipes = available("experiment")
    if name in recipes:
        return name, None
    prefixes = [recipe for recipe in recipes if name.startswith(f"{recipe}_")]
    if not prefixes:
        return name, None
    recipe = max(prefixes, key=len)
    return recipe, name[len(recipe) + 1 :]


def run_name(resolved: dict[str, Any]) -> str:
    """`lora r=16 lr=3e-4`: the method, its rank and lr, and every hyperparameter overridden.

    A run on data other than its recipe's ends `on <data>` (`lora r=16 lr=5e-3 on tickets`).
    """
    flat = flatten(resolved)
    recipe_name, data_label = split_recipe(str(resolved["name"]))
    recipe = recipe_params(recipe_name) or {}
    same_method = recipe.get("method.name") == flat["method.name"]
    keys = [k for k in NAME_KEYS if k in flat]
    for key, value in flat.items():
        hyper = key.startswith(HYPER_PREFIXES) and key not in ("method.name", "method._target_")
        changed = key in recipe and recipe[key] != value and key not in keys
        if hyper and changed and (same_method or not key.startswith("method.")):
            keys.append(key)
    parts = [str(flat["method.name"])]
    parts += [f"{SHORT.get(k, k.rsplit('.', 1)[-1])}={_short(flat[k])}" for k in keys[:6]]
    parts += [f"on {data_label}"] if data_label else []
    return " ".join(parts)


def description(
    name: str, metrics: dict[str, float], trainable: int, total: int, wall_s: float
) -> str:
    """The run's one-line description (`mlflow.note.content`)."""
    scores = [f"{k} {v:.3f}" for k, v in sorted(metrics.items()) if k.startswith("test/")][:3]
    pct = 100.0 * trainable / max(total, 1)
    return (
        f"{name} · {' · '.join(scores) or 'no test metrics'} · "
        f"{trainable:,} trainable params ({pct:.2f}% of {total:,}) · {wall_s / 60:.1f} min"
    )


def _digest(split: Any) -> str:
    """A short fingerprint of one split: its first and last 50 rows and its length.

    Works on a list of records and on a `datasets.Dataset` alike (slices of both are plain data).
    """
    n = len(split)
    blob = json.dumps([split[:50], split[max(n - 50, 0) :], n], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def log_datasets(client: Any, run_id: str, data: dict[str, Any], splits: dict[str, Any]) -> None:
    """Log each split as an MLflow dataset input (name, source, digest, rows, context)."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset as DatasetEntity
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    source = _source(data)
    inputs = []
    for split, rows in splits.items():
        described = MetaDataset(source, name=f"{data['name']}-{split}", digest=_digest(rows))
        fields = described.to_dict()  # name, digest, source, source_type
        entity = DatasetEntity(
            name=fields["name"],
            digest=fields["digest"],
            source_type=fields["source_type"],
            source=fields["source"],
            profile=json.dumps({"num_rows": len(rows)}),
        )
        inputs.append(DatasetInput(entity, [InputTag(MLFLOW_DATASET_CONTEXT, split)]))
    client.log_inputs(run_id, datasets=inputs)


def _source(data: dict[str, Any]) -> Any:
    """Where the data came from: a local file or folder, else a Hugging Face Hub id."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

    path, root = str(data.get("path") or ""), str(data.get("root") or ".")
    for candidate in (Path(path).expanduser(), Path(root).expanduser() / path):
        if path and candidate.exists():
            with warnings.catch_warnings():  # "can be interpreted in multiple ways": local
                warnings.simplefilter("ignore")
                return resolve_dataset_source(str(candidate.resolve()))
    hub = data.get("hub_id") or path or data["name"]
    return HuggingFaceDatasetSource(path=str(hub))


def split_rows(datamodule: Any) -> dict[str, Any]:
    """The datamodule's prepared splits by MLflow context name (`train`, `validation`, `test`)."""
    return {name: rows for name, rows in (getattr(datamodule, "splits", None) or {}).items()}


def finish(logger: Any, resolved: dict, metrics: dict, counts: tuple, started: float) -> float:
    """Log the wall time since `started` (step 0: one bar per run) and the run's description.

    Returns:
        The wall time in seconds.
    """
    wall = time.time() - started
    logger.log_metrics({"wall_time_s": wall}, step=0)
    run = logger.experiment.get_run(logger.run_id)
    if run is None:  # a process other than rank zero: Lightning's experiment is a no-op there
        return wall
    name = run.info.run_name or run_name(resolved)
    note = description(name, metrics, counts[0], counts[1], wall)
    logger.experiment.set_tag(logger.run_id, "mlflow.note.content", note)
    return wall
