"""A trial whose worker died: Optuna fails it by heartbeat and reruns it; MLflow learns it too.

A worker killed mid-trial (SIGKILL, a lost machine) stops sending heartbeats; after
`sweep.grace_period` the next worker to start a trial marks it FAIL and `RetryFailedTrialCallback`
enqueues its parameters again as a new trial. That rerun closes the dead trial's MLflow child
run (left RUNNING by its worker) as FAILED, with the reason and the trial that replaces it.
A worker started on the same machine does not wait for the heartbeat: it fails at once the
RUNNING trials of workers of this host whose process is gone (`fail_dead_local_trials`).
"""

from __future__ import annotations

import os
import socket

import optuna
from mlflow import MlflowClient
from optuna.storages import BaseStorage, RetryFailedTrialCallback
from optuna.trial import TrialState

from tunelab.run.resume import process_alive
from tunelab.tracking.store import absolute_uri


def close_dead_trial(trial: optuna.Trial, tracking_uri: str) -> int | None:
    """When `trial` reruns a dead worker's trial, end that trial's child run; its number."""
    trials = trial.study.get_trials(deepcopy=False)  # numbered 0..n-1 in storage order
    number = RetryFailedTrialCallback.retried_trial_number(trials[trial.number])
    if number is None:
        return None
    client = MlflowClient(absolute_uri(tracking_uri))
    dead = trials[number]
    run_id = dead.user_attrs.get("mlflow_run_id")
    if run_id and client.get_run(run_id).info.status == "RUNNING":
        reason = f"worker lost (no heartbeat); rerun as trial {trial.number}"
        client.set_tag(run_id, "state", "failed")
        client.set_tag(run_id, "fail_reason", reason)
        client.set_terminated(run_id, "FAILED")
    return number


def worker_id() -> str:
    """`host:pid` of this worker, recorded on each of its trials.

    `TUNELAB_SWEEP_WORKER` replaces it (e.g. containers that share a host name): such a worker's
    trials are then left to the heartbeat.
    """
    return os.environ.get("TUNELAB_SWEEP_WORKER") or f"{socket.gethostname()}:{os.getpid()}"


def fail_dead_local_trials(study: optuna.Study, storage: BaseStorage) -> list[int]:
    """Fail, as interrupted, RUNNING trials whose worker was on this host and is gone.

    The heartbeat fails a dead worker's trial only after `sweep.grace_period`; a command rerun
    at once on the same machine would otherwise find the trial RUNNING, count the budget as
    spent and leave it so. Such a trial is marked `interrupted`, so it is queued again with its
    values and continues from its checkpoint (see `sweeps.budget`).

    Returns:
        The numbers of the trials failed.
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if pid.isdigit() and not process_alive(worker_host, pid):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            storage.set_trial_user_attr(trial_id, "interrupted", True)
            storage.set_trial_user_attr(trial_id, "fail_reason", "worker died (process gone)")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
            failed.append(trial.number)
    return failed
