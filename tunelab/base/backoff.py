"""A call made again, waiting longer each time, while a service it needs is away.

Used for the Optuna database (`sweeps.storage`) and for MLflow calls that cannot wait in the
outbox (`tunelab.tracking.store.when_back`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """How long to wait between tries, and for how long in all.

    Attributes:
        first: seconds before the second try; doubled after each failure.
        most: the longest wait between two tries.
        patience: seconds after which the last failure is raised.
    """

    first: float
    most: float
    patience: float


def again_while(
    call: Callable[[], T],
    away: Callable[[Exception], bool],
    backoff: Backoff,
    warn: Callable[[Exception, float], None],
) -> T:
    """`call()`, made again while `away(error)` says the service is away, within `backoff`.

    `warn(error, wait)` is called before each wait; other errors are raised at once.
    """
    deadline, wait = time.monotonic() + backoff.patience, backoff.first
    while True:
        try:
            return call()
        except Exception as err:
            if not away(err) or time.monotonic() + wait > deadline:
                raise
            warn(err, wait)
            time.sleep(wait)
            wait = min(2 * wait, backoff.most)
