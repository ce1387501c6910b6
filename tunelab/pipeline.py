"""One experiment: build data, module and trainer; fit; test the best checkpoint; export; log."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tunelab import resume, run_info, runtime_checks, signals, tracking
from tunelab.checkpoint import checkpoint_io, space_for, weights_bytes, write_atomic
from tunelab.distributed import exportable, rank_zero_previous, shared_run_dir
from tunelab.preflight import preflight
from tunelab.schema import RunConfig
from tunelab.speed import compiled, resolve_precision
from tunelab.tasks import TASKS

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
    while True:
        try:  # atomic: a run started in the same second takes the next name, never this one
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            folder, n = base.with_name(f"{base.name}_{n}"), n + 1


def build_datamodule(run: RunConfig) -> Any:
    """The data family's LightningDataModule for the validated `data` config."""
    from hydra.utils import get_class

    cls = get_class(run.data.datamodule)
    return cls(
        data=run.data,
        tokenizer=run.model.name_or_path,
        max_length=run.model.max_length,
        seed=run.seed,
    )


def build_module(run: RunConfig, labels: list[str] | None, out_of_scope: str | None = None) -> Any:
    """The LightningModule that runs the validated `method` (`method.lightning_module`)."""
    from hydra.utils import get_class

    cls = get_class(run.method.lightning_module)
    return cls(run.method, run.model, run.optim, labels or None, out_of_scope)


def build_callbacks(run: RunConfig) -> list:
    """`callbacks:` from the config, or the task's defaults when it is null."""
    from hydra.utils import get_class, instantiate

    if run.callbacks is None:
        return [get_class(target)() for target in TASKS[run.model.task].callbacks]
    return [instantiate(c.model_dump(by_alias=True)) for c in run.callbacks]


def build_trainer(run: RunConfig, run_dir: Path, logger: Any, callbacks: list) -> tuple:
    """The Lightning Trainer with checkpointing on the task's validation metric."""
    import lightning as L
    from hydra.utils import get_class
    from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar

    task = TASKS[run.model.task]
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        monitor=task.monitor,
        mode=task.mode,
        save_top_k=1,
        filename="best-{epoch}-{step}",
        auto_insert_metric_name=False,
    )
    guard = get_class("callbacks.finite_loss.FiniteLossGuard")()
    every = run.trainer.checkpoint_every_n_steps
    resumer = get_class("callbacks.resume_state.ResumeCheckpoint")(run_dir / "checkpoints", every)
    all_callbacks = [checkpoint, guard, *build_callbacks(run), *callbacks, resumer]
    if run.trainer.enable_progress_bar:
        all_callbacks.append(RichProgressBar())
    sharded = run.trainer.strategy.startswith(("fsdp", "deepspeed"))  # their own checkpoint files
    trainer = L.Trainer(
        **run.trainer.model_dump(exclude={"checkpoint_every_n_steps", "compile", "precision"}),
        plugins=None if sharded else [checkpoint_io()],  # atomic writes, weights_only reads
        precision=_precision(run, logger),
        logger=logger,
        callbacks=all_callbacks,
        default_root_dir=run_dir,
    )
    return trainer, checkpoint


def _precision(run: RunConfig, logger: Any) -> str:
    """`trainer.precision`, with `auto` resolved for this machine (and logged when it was)."""
    precision = resolve_precision(run.trainer.precision, run.trainer.accelerator)
    if run.trainer.precision == "auto":
        logger.log_hyperparams({"trainer.precision_used": precision})
    return precision


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
        write_atomic(run_dir / name, text.encode())
        logger.experiment.log_artifact(logger.run_id, str(run_dir / name))
    if resolved["export"]["save_model"]:
        folder = module.export(run_dir / "export")
        datamodule.tokenizer.save_pretrained(folder)
        signals.requested().check()  # SIGTERM while exporting: stop before the slow model log
        if resolved["logger"]["log_model"]:
            from tunelab.mlflow_model import log_run_model

            log_run_model(logger, datamodule, resolved, folder)
        if resolved["export"]["merge"]:
            _save_merged(module, datamodule, resolved, folder, logger)


def _save_merged(module: Any, datamodule: Any, resolved: dict, adapter: Path, logger: Any) -> None:
    """`export.merge=true`: write (and log) base + adapter merged into plain weights.

    Last of the outputs: the adapter is merged into the module's own weights, in place.
    """
    from hydra.utils import get_method

    merged = get_method("modules.merge.export_merged")(module, adapter, adapter.parent / "merged")
    if merged is None:
        return
    datamodule.tokenizer.save_pretrained(merged)
    if resolved["logger"]["log_model"]:
        logger.experiment.log_artifacts(logger.run_id, str(merged), artifact_path="merged_model")


def _log_start(logger: Any, resolved: dict[str, Any], module: Any) -> None:
    trainable, total = module.parameter_counts
    logger.log_hyperparams(run_info.run_params(resolved))
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
    previous: resume.Previous | None = None,
) -> RunResult:
    """Fit, validate each epoch, test with the best checkpoint, export and log one experiment.

    Args:
        cfg: the composed config (resolved here).
        run: the same config, validated.
        callbacks: extra Lightning callbacks (e.g. a sweep's pruning callback).
        parent_run_id: log as a nested MLflow child run of this run (sweep trials).
        run_dir: output folder (made unique); default `<output_root>/<name>/<timestamp>`.
        previous: an interrupted attempt to continue (default: `tunelab.resume.select`'s pick).
    """
    started, resolved = time.time(), OmegaConf.to_container(cfg, resolve=True)
    runtime_checks.before_run(run)
    if previous is None and run_dir is None and parent_run_id is None:  # a plain run.py run
        previous = rank_zero_previous(lambda: resume.select(run, resolved), resume.Previous)
    with signals.graceful_stop():
        datamodule, module = build_data_and_module(run)
        run_dir = (
            previous.run_dir if previous else shared_run_dir(run_dir, partial(make_run_dir, run))
        )
        logger = tracking.make_logger(resolved, parent_run_id, previous and previous.run_id)
        resume.mark_running(run_dir, logger.run_id, resolved)
        try:
            trainer, _ = build_trainer(run, run_dir, logger, callbacks or [])
            counts = module.parameter_counts  # before `export.merge` folds the adapter into it
            metrics, best = _fit_logged(trainer, module, datamodule, resolved, previous, logger)
            wall = run_info.finish(logger, resolved, metrics, counts, started)
        except BaseException as err:
            raise resume.stopped(err, logger, run_dir) from None
    logger.finalize("success")
    resume.finished(run_dir)
    return RunResult(metrics, logger.run_id, logger.experiment_id, run_dir, *counts, wall, best)


def _fit_logged(
    trainer: Any,
    module: Any,
    datamodule: Any,
    resolved: dict[str, Any],
    previous: resume.Previous | None,
    logger: Any,
) -> tuple[dict[str, float], str]:
    """Log the run's start (unless it continues `previous`), then fit, test and save.

    `logger` is the run's MLflow logger: with `trainer.fast_dev_run` Lightning swaps
    `trainer.logger` for a dummy, and the run's start and outputs are still logged.
    """
    if previous is None:  # a continued run logged these already
        _log_start(logger, resolved, module)
        rows = run_info.split_rows(datamodule)
        run_info.log_datasets(logger.experiment, logger.run_id, resolved["data"], rows)
    resume_from = previous.checkpoint if previous else None
    run_dir = Path(trainer.default_root_dir)
    from lightning.pytorch.callbacks import ModelCheckpoint

    [checkpoint] = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]  # best model
    return _fit_test_save(
        trainer, checkpoint, module, datamodule, resolved, run_dir, resume_from, logger
    )


def build_data_and_module(run: RunConfig) -> tuple[Any, Any]:
    """Check the architecture, seed, then the prepared datamodule and the module for its labels."""
    import lightning as L

    preflight(run)
    L.seed_everything(run.seed, workers=True, verbose=False)
    datamodule = build_datamodule(run)
    datamodule.setup("fit")
    module = build_module(run, datamodule.labels, datamodule.out_of_scope)
    if run.trainer.compile:
        compiled(module.model)
    return datamodule, module


def _fit_test_save(
    trainer: Any,
    checkpoint: Any,
    module: Any,
    datamodule: Any,
    resolved: dict,
    run_dir: Path,
    resume_from: str | None,
    logger: Any,
) -> tuple[dict[str, float], str]:
    """Fit (from `resume_from` when continuing), test the best checkpoint, write the outputs.

    Returns:
        The test metrics and the best checkpoint's path.
    """
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
    signals.requested().check()  # a signal during the last validation: stop before testing
    best = checkpoint.best_model_path or None
    # trainer.limit_test_batches=0 leaves the test split unseen (recipe selection on val/*)
    resume.write_state(run_dir, "running", phase="test")  # a signal now stops at the next batch
    tested = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)
    signals.requested().check()  # a signal in the test's last callbacks: stop before the export
    metrics = tested[0] if tested else {}
    if trainer.is_global_zero:  # one copy of the outputs, whatever the number of processes
        resume.write_state(run_dir, "running", phase="export")
        exported = exportable(trainer, module, best)  # FSDP/DeepSpeed: the best checkpoint, whole
        exporting = resolved["export"]["save_model"]
        needed = weights_bytes(exported, resolved["export"]["merge"]) if exporting else 0
        with space_for(run_dir, "the run's outputs (export, config, metrics)", needed):
            save_outputs(exported, datamodule, resolved, run_dir, metrics, logger)
    signals.requested().check()  # a signal during the export: stopped and resumable, not FINISHED
    return metrics, best or ""
