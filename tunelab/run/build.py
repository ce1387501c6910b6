"""Build what a run needs from its validated config: folder, data, module, callbacks, trainer.

Plug-ins are reached through the classes their configs name (`data.datamodule`, each callback's
`_target_`); the run's own always-on behaviour (best-checkpoint selection, the finite-loss stop,
the resume checkpoint) is added here, whatever the config says.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from tunelab.base.plugin import Labels
from tunelab.base.ranks import is_rank_zero
from tunelab.base.schema import RunConfig
from tunelab.run.speed import compiled, resolve_precision


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


def labels_of(datamodule: Any) -> Labels | None:
    """The class names a prepared datamodule found (None when the data has no classes)."""
    names = getattr(datamodule, "labels", None)
    if not names:
        return None
    return Labels(names=list(names), out_of_scope=getattr(datamodule, "out_of_scope", None))


def build_module(run: RunConfig, labels: Labels | None) -> Any:
    """The LightningModule fine-tuning `run.model` for `run.task` with `run.method`."""
    from tunelab.run.module import FineTuneModule

    return FineTuneModule(run.task, run.method, run.model, run.optim, labels)


def build_data_and_module(run: RunConfig) -> tuple[Any, Any]:
    """Seed, then the prepared datamodule and the module for its labels (the run was checked)."""
    import lightning as L

    L.seed_everything(run.seed, workers=True, verbose=False)
    datamodule = build_datamodule(run)
    datamodule.setup("fit")
    module = build_module(run, labels_of(datamodule))
    if run.trainer.compile:
        compiled(module.model)
    return datamodule, module


def build_callbacks(run: RunConfig) -> list:
    """The task's callbacks (`task.callbacks`), then the run's extra ones (`callbacks`)."""
    from hydra.utils import instantiate

    configs = [*run.task.callbacks, *run.callbacks]
    return [instantiate(c.model_dump(by_alias=True)) for c in configs]


def build_trainer(
    run: RunConfig, run_dir: Path, logger: Any, callbacks: list, resume_from: str | None = None
) -> tuple:
    """The Lightning Trainer and its best-checkpoint callback (on the task's monitor).

    `resume_from` is the checkpoint `fit` continues from (the resume callback checks that every
    process continues from the same one).
    """
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar

    from tunelab.run.checkpoint import checkpoint_io
    from tunelab.run.finite_loss import FiniteLossGuard
    from tunelab.run.resume_state import ResumeCheckpoint

    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        monitor=run.task.monitor,
        mode=run.task.mode,
        save_top_k=1,
        filename="best-{epoch}-{step}",
        auto_insert_metric_name=False,
    )
    guard = FiniteLossGuard()
    every = run.trainer.checkpoint_every_n_steps
    resumer = ResumeCheckpoint(run_dir / "checkpoints", every, resume_from)
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
    if run.trainer.precision == "auto" and is_rank_zero():
        logger.log_hyperparams({"trainer.precision_used": precision})
    return precision
