"""One experiment: build data, module and trainer; fit; test the best checkpoint; export; log."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tunelab import tracking
from tunelab.schema import RunConfig

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What one experiment produced."""

    metrics: dict[str, float]
    run_id: str
    experiment_id: str
    run_dir: Path
    trainable_params: int
    total_params: int
    wall_time_s: float
    best_checkpoint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def make_run_dir(run: RunConfig, base: Path | None = None) -> Path:
    """`<output_root>/<name>/<timestamp>` (or `base` when given), made unique."""
    base = base or Path(run.output_root) / run.name / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    folder, n = base, 1
    while folder.exists():
        folder, n = base.with_name(f"{base.name}_{n}"), n + 1
    folder.mkdir(parents=True)
    return folder


def _locate(target: str) -> Any:
    from hydra.utils import get_class

    return get_class(target)


def build_datamodule(resolved: dict[str, Any]) -> Any:
    """Instantiate `data._target_` with the model's tokenizer and the run seed."""
    data = dict(resolved["data"])
    cls = _locate(data.pop("_target_"))
    model = resolved["model"]
    return cls(
        **data,
        tokenizer=model["name_or_path"],
        max_length=model["max_length"],
        seed=resolved["seed"],
    )


def build_module(resolved: dict[str, Any], labels: list[str] | None) -> Any:
    """Instantiate `method._target_`, the method's LightningModule."""
    cls = _locate(resolved["method"]["_target_"])
    return cls(
        method=resolved["method"],
        model=resolved["model"],
        optim=resolved["optim"],
        labels=labels or None,
    )


def task_callbacks(task: str) -> list:
    """Callbacks a task always gets: for decoders, generation samples and the mask preview."""
    if task != "causal_lm":
        return []
    from callbacks.generation import GenerationCallback
    from callbacks.mask_preview import MaskPreviewCallback

    return [GenerationCallback(), MaskPreviewCallback()]


def build_trainer(resolved: dict[str, Any], run_dir: Path, logger: Any, callbacks: list) -> tuple:
    """The Lightning Trainer with checkpointing on the task's validation metric."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar

    from callbacks.finite_loss import FiniteLossGuard
    from modules.tasks import MONITOR

    monitor, mode = MONITOR[resolved["model"]["task"]]
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        filename="best-{epoch}-{step}",
        auto_insert_metric_name=False,
    )
    task = resolved["model"]["task"]
    all_callbacks = [checkpoint, FiniteLossGuard(), *task_callbacks(task), *callbacks]
    if resolved["trainer"]["enable_progress_bar"]:
        all_callbacks.append(RichProgressBar())
    trainer = L.Trainer(
        **resolved["trainer"], logger=logger, callbacks=all_callbacks, default_root_dir=run_dir
    )
    return trainer, checkpoint


def save_outputs(
    module: Any,
    datamodule: Any,
    resolved: dict,
    run_dir: Path,
    metrics: dict[str, float],
    logger: Any,
) -> None:
    """Write config, label map, test metrics and the exported model; log them to MLflow."""
    files = {
        "config.yaml": OmegaConf.to_yaml(OmegaConf.create(resolved)),
        "test_metrics.json": json.dumps(metrics, indent=2),
    }
    if datamodule.labels:
        files["label_map.json"] = json.dumps(dict(enumerate(datamodule.labels)), indent=2)
    for name, text in files.items():
        (run_dir / name).write_text(text)
        logger.experiment.log_artifact(logger.run_id, str(run_dir / name))
    if resolved["export"]["save_model"]:
        folder = module.export(run_dir / "export")
        datamodule.tokenizer.save_pretrained(folder)
        if resolved["logger"]["log_model"]:
            logger.experiment.log_artifacts(logger.run_id, str(folder), artifact_path="model")
        if resolved["export"]["merge"]:
            _save_merged(module, datamodule, resolved, folder, logger)


def _save_merged(module: Any, datamodule: Any, resolved: dict, adapter: Path, logger: Any) -> None:
    """`export.merge=true`: write (and log) base + adapter merged into plain weights."""
    from modules.merge import export_merged

    merged = export_merged(module, adapter, adapter.parent / "merged")
    if merged is None:
        return
    datamodule.tokenizer.save_pretrained(merged)
    if resolved["logger"]["log_model"]:
        logger.experiment.log_artifacts(logger.run_id, str(merged), artifact_path="merged_model")


def _log_start(logger: Any, resolved: dict[str, Any], module: Any) -> None:
    trainable, total = module.parameter_counts
    logger.log_hyperparams(tracking.flatten(resolved))
    logger.log_metrics(
        {
            "params/trainable": trainable,
            "params/total": total,
            "params/trainable_pct": 100.0 * trainable / max(total, 1),
        },
        step=0,
    )


def run_experiment(
    cfg: DictConfig,
    run: RunConfig,
    *,
    callbacks: list | None = None,
    parent_run_id: str | None = None,
    run_dir: Path | None = None,
) -> RunResult:
    """Fit, validate each epoch, test with the best checkpoint, export and log one experiment.

    Args:
        cfg: the composed config (resolved here).
        run: the same config, validated.
        callbacks: extra Lightning callbacks (e.g. a sweep's pruning callback).
        parent_run_id: log as a nested MLflow child run of this run (sweep trials).
        run_dir: output folder (made unique); default `<output_root>/<name>/<timestamp>`.
    """
    import lightning as L

    started = time.time()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    L.seed_everything(run.seed, workers=True, verbose=False)
    run_dir = make_run_dir(run, run_dir)
    datamodule = build_datamodule(resolved)
    datamodule.setup("fit")
    module = build_module(resolved, datamodule.labels)
    logger = tracking.make_logger(resolved, parent_run_id)
    trainer, checkpoint = build_trainer(resolved, run_dir, logger, callbacks or [])
    _log_start(logger, resolved, module)
    try:
        trainer.fit(module, datamodule=datamodule)
        best = checkpoint.best_model_path or None
        metrics = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
        save_outputs(module, datamodule, resolved, run_dir, metrics, logger)
        logger.log_metrics({"wall_time_s": time.time() - started})
    except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C into SystemExit(1)
        logger.finalize("KILLED")
        raise
    except BaseException:
        logger.finalize("FAILED")
        raise
    logger.finalize("success")
    trainable, total = module.parameter_counts
    return RunResult(
        metrics,
        logger.run_id,
        logger.experiment_id,
        run_dir,
        trainable,
        total,
        time.time() - started,
        best or "",
    )
