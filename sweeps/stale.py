"""A trial whose worker died: Optuna fails it by heartbeat and reruns it; MLflow learns it too.

A worker killed mid-trial (SIGKILL, a lost machine) stops sending heartbeats; after
`sweep.grace_period` the next worker to start a trial marks it FAIL and `RetryFailedTrialCallback`
enqueues its parameters again as a new trial. That rerun closes the dead trial's MLflow child
run (left RUNNING by its worker) as FAILED, with the reason and the trial that replaces it.
"""

from __future__ import annotations

import optuna
from mlflow import MlflowClient
from optuna.storages import RetryFailedTrialCallback

from tunelab.tracking import absolute_uri


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
