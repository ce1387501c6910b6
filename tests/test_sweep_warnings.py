"""Optuna's experimental heartbeat-retry API, as tunelab uses it, warns nobody."""

from __future__ import annotations

import warnings

import optuna

from sweeps.budget import counted, retried_from, retry_callback
from sweeps.storage import DeadTrial


def test_the_retry_bookkeeping_raises_no_warning():
    trial = optuna.trial.create_trial(value=1.0, system_attrs={"failed_trial": 3})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert retried_from(trial) == 3
        assert counted([trial]) == [trial]
        retry_callback()
        DeadTrial("")
    assert [str(w.message) for w in caught] == []
