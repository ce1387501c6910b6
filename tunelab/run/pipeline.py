"""One experiment as one object: `Run(config).execute()` sets up, fits, tests, exports, closes.

The typed config travels; it becomes plain data once (`RunConfig.as_dict`), for MLflow, the run
folder's `config.yaml` and the resume state. Each phase keeps what it made on `self`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tunelab.base import signals
from tunelab.base.errors import ConfigError
from tunelab.base.ranks import is_rank_zero
from tunelab.base.schema import RunConfig
from tunelab.config.preflight import preflight
from tunelab.run import machine, resume
from tunelab.run.build import build_data_and_module, build_trainer, make_run_dir
from tunelab.run.checkpoint import space_for, weights_bytes, write_atomic
from tunelab.run.distributed import exportable, rank_zero_previous, shared_run_dir
from tunelab.tracking import run_info
from tunelab.tracking import store as tracking

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


@dataclass
class RunOptions:
    """How a run is started by whoever starts it (run.py, a sweep trial, compare).

    Attributes:
        callbacks: extra Lightning callbacks (e.g. a sweep's pruning callback).
        parent_run_id: log as a nested MLflow child run of this run (sweep trials, compare).
        run_dir: output folder (made unique); default `<output_root>/<name>/<timestamp>`.
        previous: an interrupted attempt to continue (default for a plain run:
            `tunelab.run.resume.select`'s pick).
    """

    callbacks: list = field(default_factory=list)
    parent_run_id: str | None = None
    run_dir: Path | None = None
    previous: resume.Previous | None = None

    @property
    def plain(self) -> bool:
        """A run started from the command line on its own (it may continue an earlier one)."""
        return self.previous is None and self.run_dir is None and self.parent_run_id is None


class Run:
    """Fit, validate each epoch, test the best checkpoint, export and log one experiment.

    Args:
        config: the validated config.
        options: how the run was started (see `RunOptions`).
    """

    def __init__(self, config: RunConfig, options: RunOptions | None = None):
        self.config, self.options = config, options or RunOptions()
        self.resolved = config.as_dict()  # plain data, once: MLflow params, config.yaml, resume
        self.started = time.time()
        self.previous = self.options.previous
        self.datamodule: Any = None
        self.module: Any = None
        self.logger: Any = None
        self.trainer: Any = None
        self.checkpoint: Any = None
        self.run_dir = Path()
        self.counts = (0, 0)
        self.metrics: dict[str, float] = {}
        self.best = ""

    def setup(self) -> None:
        """Data, module, run folder and MLflow run (the interrupted ones when continuing)."""
        self.datamodule, self.module = build_data_and_module(self.config)
        self.counts = self.module.parameter_counts  # before `export.merge` folds the adapter
        planned = partial(make_run_dir, self.config)
        self.run_dir = (
            self.previous.run_dir
            if self.previous
            else shared_run_dir(self.options.run_dir, planned)
        )
        continued = self.previous and self.previous.run_id
        self.logger = tracking.make_logger(
            self.resolved, self.options.parent_run_id, continued, self.run_dir
        )
        if is_rank_zero():  # the others start no MLflow run of their own by asking its id
            resume.mark_running(self.run_dir, self.logger.run_id, self.resolved)

    def fit(self) -> None:
        """Log the run's start (unless it continues one), then train with validation."""
        resume_from = self.previous.checkpoint if self.previous else None
        self.trainer, self.checkpoint = build_trainer(
            self.config, self.run_dir, self.logger, self.options.callbacks, resume_from
        )
        if self.previous is None and is_rank_zero():  # a continued run logged these already
            self._log_start()
        self.trainer.fit(
            self.module, datamodule=self.datamodule, ckpt_path=resume_from, weights_only=True
        )
        before, self.counts = self.counts, self.module.parameter_counts
        if self.counts != before and is_rank_zero():  # a method's `prepare` (pruning) reshaped it
            self._log_counts()
        signals.requested().check()  # a signal during the last validation: stop before testing

    def test(self) -> None:
        """Test the best checkpoint (`trainer.limit_test_batches=0` leaves the test split alone)."""
        self.best = self.checkpoint.best_model_path or ""
        resume.write_state(self.run_dir, "running", phase="test")  # a signal stops it next batch
        tested = self.trainer.test(
            self.module,
            datamodule=self.datamodule,
            ckpt_path=self.best or None,
            verbose=False,
            weights_only=True,
        )
        self.metrics = tested[0] if tested else {}
        signals.requested().check()  # a signal in the test's last callbacks: stop before export

    def export(self) -> None:
        """Write config, label map, test metrics and the model (rank 0 only); log them."""
        if not self.trainer.is_global_zero:  # one copy, whatever the number of processes
            return
        resume.write_state(self.run_dir, "running", phase="export")
        module = exportable(self.trainer, self.module, self.best or None)  # FSDP: whole
        saving = self.config.export.save_model
        needed = weights_bytes(module, self.config.export.merge) if saving else 0
        with space_for(self.run_dir, "the run's outputs (export, config, metrics)", needed):
            self._write_outputs(module)
        signals.requested().check()  # a signal during the export: stopped, resumable

    def _write_outputs(self, module: Any) -> None:
        files = {
            "config.yaml": _yaml(self.resolved),
            "test_metrics.json": json.dumps(self.metrics, indent=2),
        }
        if self.datamodule.labels:
            files["label_map.json"] = json.dumps(dict(enumerate(self.datamodule.labels)), indent=2)
        for name, text in files.items():
            write_atomic(self.run_dir / name, text.encode())
            self.logger.experiment.log_artifact(self.logger.run_id, str(self.run_dir / name))
        if self.config.export.save_model:
            self._save_model(module)

    def close(self) -> RunResult:
        """Mark the MLflow run FINISHED and the run folder done; the run's result."""
        self.logger.finalize("success")
        resume.finished(self.run_dir)
        run_id, experiment_id = self.logger.run_id, self.logger.experiment_id
        wall = time.time() - self.started
        return RunResult(
            self.metrics, run_id, experiment_id, self.run_dir, *self.counts, wall, self.best
        )

    def check(self) -> None:
        """The machine, the model's architecture and what to resume, before anything loads.

        Raises:
            ConfigError: every problem found, in one listing.
        """
        problems: list[str] = []
        machine.check_machine(self.config, problems)
        preflight(self.config, problems)
        if self.options.plain:
            select = partial(resume.select, self.config, self.resolved)
            try:
                self.previous = rank_zero_previous(self.config, select)
            except ConfigError as err:
                problems += err.problems
        if problems:
            raise ConfigError(problems)

    def execute(self) -> RunResult:
        """Check, set up, fit, test, export, close; a failure or signal leaves it resumable."""
        self.check()
        with signals.graceful_stop():
            self.setup()
            try:
                self.fit()
                self.test()
                self.export()
                run_info.finish(self.logger, self.resolved, self.metrics, self.counts, self.started)
            except BaseException as err:
                raise resume.stopped(err, self.logger, self.run_dir) from None
        return self.close()

    def _log_start(self) -> None:
        self.logger.log_hyperparams(run_info.run_params(self.resolved))
        self._log_counts()
        rows = run_info.split_rows(self.datamodule)
        client, run_id = self.logger.experiment, self.logger.run_id
        run_info.log_datasets(client, run_id, self.resolved["data"], rows)

    def _log_counts(self) -> None:
        trainable, total = self.counts
        counts = {"params/trainable": trainable, "params/total": total}
        counts["params/trainable_pct"] = 100.0 * trainable / max(total, 1)
        self.logger.log_metrics(counts, step=0)

    def _save_model(self, module: Any) -> None:
        """The export folder with its `model_info.json`; logged as an MLflow Model; merged."""
        from tunelab.serving.inference import model_info, write_info

        folder = module.export(self.run_dir / "export")
        self.datamodule.tokenizer.save_pretrained(folder)
        write_info(folder, model_info(self.config, self.datamodule.labels))
        signals.requested().check()  # SIGTERM while exporting: stop before the slow model log
        if self.config.logger.log_model:
            from tunelab.serving.mlflow_model import log_run_model

            example = self.config.task.examples(self.datamodule)
            log_run_model(self.logger, self.config, folder, example)
        if self.config.export.merge:
            self._save_merged(module, folder)

    def _save_merged(self, module: Any, adapter: Path) -> None:
        """`export.merge=true`: write (and log) base + adapter merged into plain weights.

        Last of the outputs: the adapter is merged into the module's own weights, in place.
        """
        from tunelab.run.merge import export_merged
        from tunelab.serving.inference import model_info, write_info

        merged = export_merged(module, adapter, adapter.parent / "merged")
        if merged is None:
            return
        self.datamodule.tokenizer.save_pretrained(merged)
        module.write_extras(merged)
        write_info(merged, model_info(self.config, self.datamodule.labels))
        if self.config.logger.log_model:
            run_id = self.logger.run_id
            self.logger.experiment.log_artifacts(run_id, str(merged), artifact_path="merged_model")


def _yaml(tree: dict[str, Any]) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(tree))


def run_experiment(run: RunConfig, **options: Any) -> RunResult:
    """Run one experiment; `options` are `RunOptions` fields (callbacks, parent_run_id, ...)."""
    return Run(run, RunOptions(**options)).execute()
