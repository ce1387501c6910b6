"""SIGINT and SIGTERM stop a run at the next batch boundary, after saving its checkpoint.

`graceful_stop()` installs handlers that only record the signal; the resume callback
(`tunelab.run.resume_state.ResumeCheckpoint`) sees it after the batch in progress, saves the full
training state and raises `Interrupted`. `run.py` turns that into one line saying how to resume
and the exit status of the signal (130 for SIGINT, 143 for SIGTERM), and the MLflow run is
marked KILLED. A second signal stops at once (the last periodic checkpoint is then the one
resumed).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The run stopped on a signal; `exit_code` is 128 + the signal number.

    A `BaseException`, like `KeyboardInterrupt`: code that catches `Exception` to carry on (a
    sweep going to its next trial) must not swallow it.

    Attributes:
        signum: the signal received.
        run_dir: the run folder that holds the checkpoint to resume (when known).
        saved: whether a checkpoint was saved on the way out.
    """

    def __init__(self, signum: int, run_dir: Path | None = None, saved: bool = False):
        self.signum, self.run_dir, self.saved = signum, run_dir, saved
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        """128 + signal number, as a shell reports a process ended by that signal."""
        return 128 + int(self.signum)


class StopRequest:
    """The signal received so far (None while none was)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def check(self) -> None:
        """Raise `Interrupted` when a signal was received."""
        if self.signum is not None:
            raise Interrupted(self.signum)


_current: list[StopRequest] = []


def requested() -> StopRequest:
    """The innermost active stop request (a fresh, never-set one outside `graceful_stop`)."""
    return _current[-1] if _current else StopRequest()


@contextmanager
def graceful_stop() -> Iterator[StopRequest]:
    """Record SIGINT/SIGTERM instead of dying; a second one raises `Interrupted` at once."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: Any) -> None:
        if request.signum is not None:
            raise Interrupted(signum)
        request.signum = signum

    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
        signal.signal(sig, handler)
    _current.append(request)
    try:
        yield request
    finally:
        _current.remove(request)
        for sig, old in previous.items():
            signal.signal(sig, old)
