"""`perf/time_to_first_step_s`: logged once per run at its first optimiser step, never again when
the run resumes; the callback waits out gradient accumulation."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from conftest import StopAt, tiny_overrides
from mlflow import MlflowClient

import run as cli
from callbacks.first_step import METRIC, TimeToFirstStep

ARGS = ("trainer.max_epochs=1", "trainer.checkpoint_every_n_steps=2", "export.save_model=false")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Recorder:
    """A logger stand-in that keeps what it was given."""

    def __init__(self):
        self.logged: list[tuple[dict, int]] = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.logged.append((metrics, step))


def test_logs_once_after_the_first_optimizer_step_not_during_accumulation():
    callback, recorder = TimeToFirstStep(), Recorder()
    trainer = SimpleNamespace(global_step=0, loggers=[recorder])
    callback.on_train_start(trainer, None)
    callback.on_train_batch_end(trainer, None, None, None, 0)  # accumulating: no step yet
    assert recorder.logged == []
    for step in (1, 2):
        trainer.global_step = step
        callback.on_train_batch_end(trainer, None, None, None, step)
    [(metrics, step)] = recorder.logged
    assert step == 1 and metrics[METRIC] == callback.seconds > 0


def test_a_fit_that_starts_past_step_zero_logs_nothing():
    callback, recorder = TimeToFirstStep(), Recorder()
    trainer = SimpleNamespace(global_step=6, loggers=[recorder])
    callback.on_train_start(trainer, None)
    trainer.global_step = 7
    callback.on_train_batch_end(trainer, None, None, None, 0)
    assert recorder.logged == [] and callback.seconds is None


def _history(folder: Path) -> tuple[object, list]:
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return run, client.get_metric_history(run.info.run_id, METRIC)


def test_a_run_logs_its_time_to_first_step_once(workdir, tiny_bert, intent_data):
    """Seconds since this (pytest) process started: between the process's age when the run
    started and its age when the run ended (in a fresh process: under the run's wall time)."""
    started = psutil.Process().create_time()
    before = time.time() - started
    assert cli.main(["experiment=quickstart", *tiny_overrides(tiny_bert, intent_data, *ARGS)]) == 0
    after = time.time() - started
    _, [metric] = _history(workdir)
    assert metric.step == 1 and before < metric.value < after


def test_a_resumed_run_does_not_log_it_again(workdir, tiny_bert, intent_data, monkeypatch):
    import tunelab.run.pipeline as pipeline

    args = ["experiment=quickstart", *tiny_overrides(tiny_bert, intent_data, *ARGS)]
    build = pipeline.build_trainer
    with monkeypatch.context() as patch:
        patch.setattr(
            pipeline, "build_trainer", lambda *a: build(*a[:3], [StopAt(2), *a[3]], *a[4:])
        )
        assert cli.main(args) == 143
    _, [first] = _history(workdir)
    assert cli.main(args) == 0  # continues the stopped run from step 2
    run, history = _history(workdir)
    assert run.info.status == "FINISHED" and history == [first]
