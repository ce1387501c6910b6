"""A trial slot is claimed before the trial starts, so `sweep.n_trials` is exact over all workers.

A worker starts a trial only while it holds the study's lock (`sweeps.locks.study_lock`):
under it, it counts the trials that use the budget (`sweeps.budget.counted`) plus the ones
RUNNING (each holds a slot), and creates its own trial (RUNNING at once) only when a slot is
free. Two workers therefore never both take the last slot. A worker that finds every slot
taken while trials still run waits for them instead of leaving: if such a trial's worker
dies, the heartbeat fails it (`optuna.storages.fail_stale_trials`, after `sweep.grace_period`)
or, on this machine, its dead process id does at once (`sweeps.stale`); the slot is free
again and the waiting worker reruns the trial. The study thus ends with `n_trials` finished
trials, none counted twice and none lost.
"""

from __future__ import annotations

import logging
import time
import warnings
from contextlib import ExitStack
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from sweeps import budget
from sweeps.locks import study_lock
from sweeps.space import SweepConfig
from sweeps.stale import fail_dead_local_trials
from sweeps.storage import connection_lost, retry

log = logging.getLogger(__name__)

POLL_S = 10.0  # at most this long between looks at a study whose slots are all taken


class Claimed:
    """The objective, releasing the claim lock once Optuna has created (and started) the trial."""

    def __init__(self, objective: Any, claim: ExitStack):
        self.objective, self.claim = objective, claim

    def __call__(self, trial: optuna.Trial) -> float:
        """The trial holds its slot (it is RUNNING): let the other workers count it."""
        self.claim.close()
        return self.objective(trial)


def free_slots(
    study: optuna.Study, storage: BaseStorage, n_trials: int, tracking_uri: str
) -> tuple[int, int]:
    """Slots left in the budget, and the trials running now (dead workers' trials failed first).

    Returns:
        `(free, running)`: `n_trials` minus counted and running trials, and the running ones.
    """
    with warnings.catch_warnings():  # Optuna marks fail_stale_trials experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    fail_dead_local_trials(study, storage, tracking_uri)
    budget.rerun_interrupted(study)  # a dead or stopped worker's trial, queued again (once)
    trials = study.get_trials(deepcopy=False)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return n_trials - len(budget.counted(trials)) - running, running


def _one_trial(study: optuna.Study, objective: Claimed) -> None:
    """One trial; a lost database connection in Optuna's own bookkeeping is retried by the loop.

    The objective's own errors are the trial's (FAIL, `catch`); what escapes `optimize` comes
    from Optuna's calls around it (stale trials, ask), made before the trial took its slot.
    """
    try:
        study.optimize(objective, n_trials=1, catch=(Exception,))
    except Exception as err:
        if not connection_lost(err):
            raise
        log.warning("database unreachable before the trial started; claiming again")
        time.sleep(1.0)


def optimize(
    study: optuna.Study, storage: BaseStorage, objective: Any, space: SweepConfig, tracking_uri: str
) -> None:
    """Run trials, one claimed slot at a time, until the budget is spent (by any worker).

    Args:
        study: the loaded study.
        storage: its storage.
        objective: the trial function.
        space: the sweep settings (`n_trials`, `timeout`, `storage`, `heartbeat_interval`).
        tracking_uri: MLflow tracking URI (dead trials' child runs end KILLED).
    """
    deadline = time.monotonic() + space.timeout if space.timeout else None
    while deadline is None or time.monotonic() < deadline:
        with ExitStack() as claim:
            claim.enter_context(study_lock(space.storage, study.study_name))
            free, running = retry(
                lambda: free_slots(study, storage, space.n_trials, tracking_uri), "counting slots"
            )
            if free > 0:
                _one_trial(study, Claimed(objective, claim))
                continue
        if running == 0:
            return
        time.sleep(min(POLL_S, space.heartbeat_interval))
