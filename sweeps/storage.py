"""The study's storage: shared by workers, riding out database restarts, closing dead trials.

A PostgreSQL server restarted (or a network blip) in the middle of a sweep breaks every open
connection. SQLAlchemy's `pool_pre_ping` replaces broken pooled connections; a call made while
the server is still away fails with a connection error (`OperationalError`, which Optuna wraps
in `StorageInternalError`). `RetryingRDBStorage` retries such calls with exponential backoff
for up to `RETRY_FOR` seconds, so trials, reports and heartbeats carry on once the database is
back. Other errors (bad data, integrity) are raised at once.

A trial whose worker died is failed by the heartbeat (`sweep.grace_period`); `DeadTrial` then
queues its rerun (Optuna's `RetryHeartbeatStaleTrialCallback`) and ends its MLflow child run KILLED.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial

from sweeps.budget import retry_callback
from tunelab.base.backoff import Backoff, again_while

log = logging.getLogger(__name__)
RETRY_FOR = 300.0  # s of retries before a storage call gives up (a restart takes seconds)
FIRST_WAIT, MAX_WAIT = 0.5, 15.0
T = TypeVar("T")

# RDBStorage's public methods that talk to the database (Optuna calls them, through its cache).
RETRIED = (
    "create_new_study",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "get_all_trials",
    "get_best_trial",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "record_heartbeat",
)


def connection_lost(err: BaseException) -> bool:
    """Whether `err` (or what Optuna wrapped) is a lost or refused database connection."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    lost = (OperationalError, InterfaceError)
    return isinstance(err, lost) or (
        isinstance(err, optuna.exceptions.StorageInternalError) and isinstance(err.__cause__, lost)
    )


def retry(call: Callable[[], T], what: str) -> T:
    """`call()`, retried with exponential backoff while the database is unreachable."""

    def warn(err: Exception, wait: float) -> None:
        log.warning(
            "database unreachable (%s); retrying %s in %.1f s", type(err).__name__, what, wait
        )

    return again_while(call, connection_lost, Backoff(FIRST_WAIT, MAX_WAIT, RETRY_FOR), warn)


def _retrying(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def wrapper(self: RDBStorage, *args: Any, **kwargs: Any) -> Any:
        return retry(lambda: method(self, *args, **kwargs), name)

    return wrapper


class RetryingRDBStorage(RDBStorage):
    """`RDBStorage` whose database calls are retried while the connection is lost (see module).

    A call whose commit reached the database just before the connection broke is sent again;
    reports, attributes, states and heartbeats are idempotent. (`create_new_trial` is not: if
    the server commits the new trial and dies before answering, a second trial row is made;
    the window is one round trip wide.)
    """


for _name in RETRIED:
    setattr(RetryingRDBStorage, _name, _retrying(_name))


class DeadTrial:
    """Called by the heartbeat for a dead worker's trial: rerun it, end its MLflow run KILLED."""

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri
        self.retry = retry_callback()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Queue the rerun, then close the trial's child run (best effort: MLflow may be down)."""
        self.retry(study, trial)
        if self.tracking_uri:
            from sweeps.stale import kill_child_run

            kill_child_run(self.tracking_uri, trial, "worker lost (no heartbeat)")


def make_storage(
    url: str, heartbeat_interval: int = 60, grace_period: int = 180, tracking_uri: str = ""
) -> RDBStorage:
    """An RDB storage shared safely by several workers (see module doc).

    Args:
        url: the SQLAlchemy URL (`sweep.storage`).
        heartbeat_interval: seconds between a running trial's heartbeats.
        grace_period: seconds without a heartbeat before a trial counts as dead.
        tracking_uri: MLflow tracking URI of the trials' child runs (closed KILLED when dead).
    """
    sqlite = url.startswith("sqlite")
    engine = {"connect_args": {"timeout": 120}} if sqlite else {"pool_pre_ping": True}
    return retry(
        lambda: RetryingRDBStorage(
            url,
            engine_kwargs=engine,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=DeadTrial(tracking_uri),
        ),
        "opening the storage",
    )
