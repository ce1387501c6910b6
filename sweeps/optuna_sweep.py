"""Run an Optuna study over a search space: seeded TPE, pruning at every validation, resumable.

    python run.py experiment=lora_minilm_banking77 sweep=lora_rank_lr sweep.n_trials=20

Optuna is driven directly (no Hydra sweeper plugin). Each trial is one `run_experiment` in its
own folder `<output_root>/<name>/<study_name>/trial_<n>`, logged as a nested MLflow child of one
parent run per study. The study lives in an Optuna RDB storage (default `sqlite:///optuna.db`);
the same `sweep.study_name` resumes it and several workers may run the same command at once.
`sweep.n_trials` is the study's total of complete, pruned and failed trials over all workers,
exact: each trial claims its slot before it starts (`sweeps.claims`). The storage rides out a
database restart (`sweeps.storage`); local workers share the CPU cores (`share_cores`).
"""

from __future__ import annotations

import gc
import signal
from pathlib import Path
from typing import Any

import lightning as L
import optuna
from omegaconf import DictConfig
from optuna.storages import BaseStorage
from typing_extensions import override

from callbacks.optuna_pruning import OptunaPruning, reports_per_epoch
from sweeps import budget, claims, report
from sweeps.locks import setup_lock
from sweeps.space import SweepConfig, suggest, trial_config
from sweeps.stale import close_dead_trial, fail_dead_local_trials, share_cores, worker_id
from sweeps.storage import make_storage
from tunelab.base.errors import TunelabError
from tunelab.base.schema import RunConfig
from tunelab.base.signals import Interrupted


class SweepInterrupted(TunelabError):
    """Ctrl-C during a sweep: the study and MLflow runs were saved; rerun to resume."""


class TrialRecorder(L.Callback):
    """Tracks one trial: its MLflow child run, best validation value and training steps."""

    def __init__(self, trial: optuna.Trial, study_name: str, metric: str, direction: str):
        self.trial, self.study_name, self.metric = trial, study_name, metric
        self.sign = 1.0 if direction == "maximize" else -1.0
        self.best: float | None = None
        self.steps = 0
        self.run_id: str | None = None
        self.client: Any = None

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.run_id = trainer.logger.run_id
        self.client = trainer.logger.experiment  # its writes wait while the server is away
        self.trial.set_user_attr("mlflow_run_id", self.run_id)
        run = self.client.get_run(self.run_id)  # None while the server is away
        name = run.info.run_name if run else ""
        if run and not name.startswith("#"):  # `#3 lora r=8 lr=3e-4`: number, what differs
            self.client.set_tag(self.run_id, "mlflow.runName", f"#{self.number} {name}")
        for key, value in self.tags("running").items():
            self.client.set_tag(self.run_id, key, value)

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.steps = trainer.global_step
        value = trainer.callback_metrics.get(self.metric)
        if trainer.sanity_checking or value is None:
            return
        if self.best is None or self.sign * (float(value) - self.best) > 0:
            self.best = float(value)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.steps = trainer.global_step

    @property
    def number(self) -> int:
        """The Optuna trial number."""
        return self.trial.number

    def tags(self, state: str) -> dict[str, str]:
        """Tags of the trial's child run."""
        return {"sweep": self.study_name, "trial": str(self.number), "state": state}


def make_sampler(space: SweepConfig, offset: int) -> optuna.samplers.BaseSampler:
    """Seeded TPE (default) or random search; `offset` decorrelates resumed runs and workers."""
    seed = None if space.seed is None else space.seed + offset
    if space.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=space.n_startup_trials)


def make_pruner(space: SweepConfig, max_resource: int | str) -> optuna.pruners.BasePruner:
    """Median, successive-halving (ASHA) or Hyperband pruning over validations, or none.

    Args:
        space: the sweep settings (`pruner` and its keys).
        max_resource: validations in a full trial (`max_reports`), Hyperband's top rung.

    Returns:
        The pruner; its step k means "after the k-th validation".
    """
    if space.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=space.pruner_startup_trials, n_warmup_steps=space.n_warmup_steps
        )
    if space.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=space.min_resource, reduction_factor=space.reduction_factor
        )
    if space.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=space.min_resource,
            max_resource=max_resource,
            reduction_factor=space.reduction_factor,
        )
    return optuna.pruners.NopPruner()


def max_reports(run: RunConfig) -> int | str:
    """Validations (pruning reports) in a full trial: Hyperband's `max_resource`."""
    trainer = run.trainer
    if trainer.max_epochs <= 0:
        return "auto"
    per_epoch = reports_per_epoch(trainer.val_check_interval)
    return max(1, trainer.max_epochs // trainer.check_val_every_n_epoch) * per_epoch


def load_study(space: SweepConfig, run: RunConfig) -> tuple[optuna.Study, BaseStorage]:
    """Create the study, or load it when `study_name` already exists; the study and its storage."""
    uri = run.logger.tracking_uri
    storage = make_storage(space.storage, space.heartbeat_interval, space.grace_period, uri)
    study = optuna.create_study(
        study_name=space.study_name or run.name,
        storage=storage,
        direction=space.direction,
        pruner=make_pruner(space, max_reports(run)),
        load_if_exists=True,
    )
    fail_dead_local_trials(study, storage, uri)  # this host's dead workers: no grace period
    study.sampler = make_sampler(space, len(study.trials))
    for values in space.enqueue:  # points already tried (by any worker) are not queued again
        study.enqueue_trial(values, skip_if_exists=True)
    return study, storage


class Objective:
    """One trial: sample values, validate, run the experiment, record the outcome."""

    def __init__(self, args: list[str], run: RunConfig, space: SweepConfig, parent_id: str):
        self.args, self.run, self.space, self.parent_id = args, run, space, parent_id

    def __call__(self, trial: optuna.Trial) -> float:
        """Train one trial; its value is the best `sweep.metric` seen at any validation."""
        recorder = TrialRecorder(
            trial, trial.study.study_name, self.space.metric, self.space.direction
        )
        trial.set_user_attr("worker", worker_id())  # host:pid, for fail_dead_local_trials
        share_cores(trial)
        close_dead_trial(trial, self.run.logger.tracking_uri)  # rerun of a dead worker's trial
        try:
            result = self._train(trial, recorder)
        except optuna.TrialPruned:
            self._close(recorder, "pruned", "FINISHED")  # stopped on purpose, not crashed
            raise
        except Interrupted as err:  # SIGINT/SIGTERM: checkpoint saved, the sweep stops
            self._close(recorder, "failed", "KILLED", f"interrupted ({err})")
            trial.set_user_attr("interrupted", True)  # not counted: rerun by the next start
            raise KeyboardInterrupt from err  # what Optuna records as FAIL and re-raises
        except (KeyboardInterrupt, SystemExit) as err:  # Lightning turns Ctrl-C into SystemExit
            signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores SIGINT
            self._close(recorder, "failed", "KILLED", "interrupted (Ctrl-C)")
            trial.set_user_attr("interrupted", True)
            raise KeyboardInterrupt from err
        except Exception as err:  # OOM, NaN loss, impossible combination: FAIL, study goes on
            self._close(recorder, "failed", "FAILED", f"{type(err).__name__}: {err}")
            raise
        finally:
            gc.collect()  # the trial's model, trainer and data are unreachable by now
        trial.set_user_attr("run_dir", str(result.run_dir))
        trial.set_user_attr("test_metrics", result.metrics)  # recorded, never optimised
        self._close(recorder, "complete", None)
        return recorder.best

    def _train(self, trial: optuna.Trial, recorder: TrialRecorder) -> Any:
        """Sample, validate and run the trial's experiment in its own folder."""
        from tunelab.config.validate import validate
        from tunelab.run.pipeline import run_experiment

        trial_cfg = trial_config(self.args, suggest(trial, self.space, self.args))
        run = validate(trial_cfg)
        folder = Path(run.output_root) / self.run.name / trial.study.study_name
        pruning = OptunaPruning(trial, self.space.metric)
        previous, earlier = budget.earlier_attempt(trial, folder)  # a rerun continues it
        if earlier is not None:
            budget.carry_reports(earlier, trial, pruning, recorder)
        result = run_experiment(
            run,
            callbacks=[recorder, pruning],
            parent_run_id=self.parent_id,
            run_dir=previous.run_dir if previous else folder / f"trial_{trial.number}",
            previous=previous,
        )
        if recorder.best is None:
            raise TunelabError(f"sweep.metric {self.space.metric} was never logged at validation")
        return result

    def _close(
        self, recorder: TrialRecorder, state: str, status: str | None, reason: str = ""
    ) -> None:
        """Record the outcome on the trial (user attrs) and its MLflow child run (tags, status)."""
        trial = recorder.trial
        trial.set_user_attr("train_steps", recorder.steps)
        tags = recorder.tags(state) | ({"fail_reason": reason[:4000]} if reason else {})
        if reason:
            trial.set_user_attr("fail_reason", reason)
        client = recorder.client or report.mlflow_client(self.run)
        outcome = report.TrialOutcome(tags, status)
        report.tag_child(client, self.parent_id, recorder.run_id, trial, outcome)


def run_sweep(args: list[str], cfg: DictConfig, run: RunConfig, space: SweepConfig) -> optuna.Study:
    """Run (or resume) a study on an experiment; Ctrl-C saves it and raises `SweepInterrupted`.

    Args:
        args: the command line; each trial is composed from it plus the sampled values.
        cfg: the command line's composed config.
        run: the same, validated.
        space: the validated search space (`sweeps.space.check_sweep`).
    """
    from tunelab.tracking.report import quiet_libraries

    quiet_libraries()
    with setup_lock(space.storage):  # workers started together: one study, one parent run
        study, storage = load_study(space, run)
        sweep = report.SweepRun(study, space, args, run)
        sweep.parent_id = report.open_parent(sweep, cfg)
        budget.rerun_interrupted(study)  # under the lock: queued once, not once per worker
    try:
        objective = Objective(args, run, space, sweep.parent_id)
        claims.optimize(study, storage, objective, space, run.logger.tracking_uri)
    except Interrupted:
        report.close_parent(sweep, "KILLED")
        raise
    except KeyboardInterrupt as err:
        report.close_parent(sweep, "KILLED")
        if isinstance(err.__cause__, Interrupted):  # a signal: exit 130/143 with the resume line
            raise err.__cause__ from None
        raise SweepInterrupted(
            f"sweep interrupted; study '{study.study_name}' is saved in {space.storage}: "
            "rerun the same command to resume"
        ) from None
    except BaseException:
        report.close_parent(sweep, "FAILED")
        raise
    _finish(sweep)
    return study


def _finish(sweep: report.SweepRun) -> None:
    """Deliver the trials' waiting MLflow writes, close the parent run FINISHED, summarise."""
    from tunelab.tracking.outbox import deliver_all, unreachable

    study, space, run = sweep.study, sweep.space, sweep.run
    try:
        deliver_all([Path(run.output_root) / run.name])
        report.close_parent(sweep, "FINISHED")
        report.print_summary(study, space, run, sweep.parent_id)
    except Exception as err:
        if not unreachable(err):
            raise
        raise TunelabError(
            f"study '{study.study_name}' is done ({len(study.trials)} trials in "
            f"{report.redact(space.storage)}), but the MLflow server is unreachable, so its "
            "parent run is not closed yet: rerun the same command once the server is back "
            "(no trial runs again; the trials' own writes are delivered then too)"
        ) from None
