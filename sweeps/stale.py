"""A trial whose worker died: Optuna fails it by heartbeat and reruns it; MLflow learns it too.

A worker killed mid-trial (SIGKILL, a lost machine) stops sending heartbeats; after
`sweep.grace_period` the next worker to start a trial marks it FAIL and
`RetryHeartbeatStaleTrialCallback` enqueues its parameters again as a new trial
(`sweeps.storage.DeadTrial`), and the dead trial's MLflow child run (left RUNNING by its worker)
ends KILLED with the reason; a rerun that continues the dead attempt from its checkpoint marks
that run RUNNING again and finishes it. A worker on the same machine does not wait for the
heartbeat: it fails at once the RUNNING trials of workers of this host whose process is gone
(`fail_dead_local_trials`).
"""

from __future__ import annotations

import functools
import logging
import os
import socket

import optuna
from mlflow import MlflowClient
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from sweeps.budget import retried_from
from tunelab.run.resume import process_alive
from tunelab.tracking.store import absolute_uri

log = logging.getLogger(__name__)


def kill_child_run(tracking_uri: str, trial: FrozenTrial, reason: str) -> bool:
    """End a dead trial's MLflow child run KILLED unless it already ended so; whether it did.

    A worker killed after its run closed FINISHED but before Optuna recorded the trial leaves a
    FINISHED run of a FAIL trial: it is marked KILLED too, so MLflow and Optuna agree. Best
    effort: with the tracking server unreachable the run is left for the trial's rerun
    (`close_dead_trial`) and the sweep goes on.
    """
    from mlflow.exceptions import MlflowException

    run_id = trial.user_attrs.get("mlflow_run_id")
    if not run_id:
        return False
    client = MlflowClient(absolute_uri(tracking_uri))
    try:
        if client.get_run(run_id).info.status in ("KILLED", "FAILED"):
            return False
        client.set_tag(run_id, "state", "failed")
        client.set_tag(run_id, "fail_reason", reason)
        client.set_terminated(run_id, "KILLED")
    except MlflowException as err:
        log.warning("MLflow run %s of dead trial %d not closed: %s", run_id, trial.number, err)
        return False
    return True


def close_dead_trial(trial: optuna.Trial, tracking_uri: str) -> int | None:
    """When `trial` reruns a dead worker's trial, end that trial's child run; its number."""
    trials = trial.study.get_trials(deepcopy=False)  # numbered 0..n-1 in storage order
    number = retried_from(trials[trial.number])
    if number is None:
        return None
    reason = f"worker lost (no heartbeat); rerun as trial {trial.number}"
    kill_child_run(tracking_uri, trials[number], reason)
    return number


def worker_id() -> str:
    """`host:pid` of this worker, recorded on each of its trials.

    `TUNELAB_SWEEP_WORKER` replaces it (e.g. containers that share a host name): such a worker's
    trials are then left to the heartbeat.
    """
    return os.environ.get("TUNELAB_SWEEP_WORKER") or f"{socket.gethostname()}:{os.getpid()}"


def fail_dead_local_trials(
    study: optuna.Study, storage: BaseStorage, tracking_uri: str = ""
) -> list[int]:
    """Fail, as interrupted, RUNNING trials whose worker was on this host and is gone.

    The heartbeat fails a dead worker's trial only after `sweep.grace_period`; a command rerun
    at once on the same machine would otherwise find the trial RUNNING, count the budget as
    spent and leave it so. Such a trial is marked `interrupted`, so it is queued again with its
    values and continues from its checkpoint (see `sweeps.budget`); its MLflow child run ends
    KILLED (marked RUNNING again if the rerun continues it).

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
            if tracking_uri:
                kill_child_run(tracking_uri, trial, "worker died (process gone)")
    return failed


@functools.cache
def _threads_at_start() -> int:
    import torch

    return torch.get_num_threads()  # OMP_NUM_THREADS or all cores: never exceeded


def share_cores(trial: optuna.Trial) -> int:
    """Give this worker's trial its share of the machine's cores; the threads it gets.

    The live workers of the study on this machine (RUNNING trials of this host whose process is
    alive, this one included) each get `cores // workers` threads, at least 1 and never more
    than the worker started with: two workers on two cores use one thread each instead of
    fighting over four.
    """
    import torch

    host = socket.gethostname()
    workers = set()
    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        other_host, _, pid = str(other.user_attrs.get("worker", "")).rpartition(":")
        if other_host == host and pid.isdigit() and process_alive(other_host, pid):
            workers.add(pid)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, min(_threads_at_start(), (cores or 1) // max(1, len(workers))))
    torch.set_num_threads(threads)
    return threads
