"""What counts toward `sweep.n_trials`: trials that finished, not trials that were cut short.

A trial counts when it completed or was pruned, or when it failed on its own (a NaN loss, an
impossible combination). A trial stopped by SIGINT/SIGTERM (user attribute `interrupted`) or
whose worker died (failed by heartbeat and retried as a new trial) does not: the study runs it
again, so an interrupted sweep ends with as many finished trials as a sweep never interrupted.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from tunelab.run import resume
from tunelab.run.resume import Previous

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def retried_from(trial: FrozenTrial) -> int | None:
    """The number of the trial `trial` reruns, if any (Optuna's heartbeat retry bookkeeping).

    Optuna marks the API experimental; tunelab relies on it knowingly, so its notice is not
    passed on to the user (only inside this call).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def retry_callback() -> RetryHeartbeatStaleTrialCallback:
    """Optuna's callback that queues a dead worker's trial again, once (experimental, as above)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=1)


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that use up the budget."""
    retried = {retried_from(t) for t in trials}
    return [
        t
        for t in trials
        if t.state in FINISHED
        or (
            t.state == TrialState.FAIL
            and not t.user_attrs.get("interrupted")
            and t.number not in retried
        )
    ]


def rerun_interrupted(study: optuna.Study) -> None:
    """Queue once, with the same values, every interrupted trial that has no rerun yet."""
    trials = study.get_trials(deepcopy=False)
    rerun = {t.user_attrs.get("rerun_of") for t in trials}
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted") and t.number not in rerun:
            study.enqueue_trial(t.params, user_attrs={"rerun_of": t.number}, skip_if_exists=False)


def earlier_attempt(trial: optuna.Trial, folder: Path) -> tuple[Previous | None, Any]:
    """The checkpointed earlier attempt this trial reruns, and that attempt's trial.

    A rerun of an interrupted trial (`rerun_of`) or of one whose worker died (Optuna's retry)
    continues the earlier attempt's folder, MLflow child run and `resume.ckpt` when it has one.

    Args:
        trial: the trial about to train.
        folder: the study's folder of `trial_<n>` run folders.
    """
    trials = trial.study.get_trials(deepcopy=False)
    mine = trials[trial.number]
    number = mine.user_attrs.get("rerun_of")
    if number is None:
        number = retried_from(mine)
    if number is None:
        return None, None
    old_dir = folder / f"trial_{number}"
    state = resume.read_state(old_dir)
    if not state or not (old_dir / resume.CHECKPOINT).is_file():
        return None, None
    return resume.previous_of(old_dir, state), trials[number]


def carry_reports(old: FrozenTrial, trial: optuna.Trial, pruning: Any, recorder: Any) -> None:
    """Give a continued trial the earlier attempt's validation reports and best value."""
    values = sorted(old.intermediate_values.items())
    for step, value in values:
        trial.report(value, step)
    pruning.reports = max((step for step, _ in values), default=0)
    for _, value in values:
        if recorder.best is None or recorder.sign * (value - recorder.best) > 0:
            recorder.best = value
