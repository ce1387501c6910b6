"""Lightning's MLflow logger, with test metrics logged at step 0 so MLflow charts them as bars.

MLflow's run charts draw a metric as a line when any run logged it at a step >= 1 and as a bar
chart otherwise; final scores (`test/*`) are one value per run, so they go to step 0. A step's
training metrics are logged once: the resume checkpoint logs them before it saves (so a run
killed right after the save keeps them), and Lightning's own log of that step is then dropped.
Given an `outbox` file, every write goes through `tunelab.tracking.outbox`: with the tracking server
away, writes wait on disk and training goes on; they are delivered when the server is back.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from typing_extensions import override

from tunelab.tracking.outbox import Outbox, QueuedClient

FINAL_PREFIXES = ("test/",)
STATUS = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED"}  # Lightning's names
log = logging.getLogger(__name__)


class TunelabMLFlowLogger(MLFlowLogger):
    """`MLFlowLogger` that logs final (test) metrics at step 0, and a train step's metrics once.

    Args:
        *args: `MLFlowLogger`'s.
        outbox: where writes wait while the tracking server is away (None: no waiting).
        **kwargs: `MLFlowLogger`'s.
    """

    def __init__(self, *args: Any, outbox: Path | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._train_step_logged: tuple | None = None  # (step, metric names) logged last
        self._outbox_path, self._uri = outbox, kwargs.get("tracking_uri", "")
        self._queued: QueuedClient | None = None
        self._told = False

    @property
    @override
    def experiment(self) -> Any:
        from mlflow import MlflowClient

        client = super().experiment
        if self._outbox_path is None or not isinstance(client, MlflowClient):
            return client  # no outbox, or a process other than rank zero (a dummy)
        if self._queued is None:
            self._queued = QueuedClient(Outbox(client, self._outbox_path, self._uri))
        return self._queued

    @override
    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        final = [str(k).startswith(FINAL_PREFIXES) for k in metrics if k != "epoch"]
        if final and all(final):  # Lightning adds `epoch` to every batch of metrics
            step = 0
        if step is not None and any(str(k).startswith("train/") for k in metrics):
            logged = (step, frozenset(metrics))
            if logged == self._train_step_logged:
                return  # logged already, just before a resume checkpoint
            self._train_step_logged = logged
        super().log_metrics(metrics, step)

    @override
    def finalize(self, status: str = "success") -> None:
        """End the run (queued when the server is away), then deliver what waits."""
        if self._queued is None:
            super().finalize(status)
            return
        self.experiment.set_terminated(self.run_id, STATUS.get(status, status))
        outbox = self._queued.outbox
        if outbox.deliver(force=True):
            return
        outbox.release()  # for `python -m tunelab.tracking.outbox`; a later write takes it again
        if not self._told:  # Lightning ends fit and test, and the run ends: said once
            self._told = True
            log.warning(
                "MLflow server unreachable: %d writes of this run wait in %s; `python -m "
                "tunelab.tracking.outbox %s` delivers them (so does the experiment's next run)",
                outbox.pending,
                outbox.path,
                outbox.path.parent,
            )
