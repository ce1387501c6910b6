"""Lightning's MLflow logger, with test metrics logged at step 0 so MLflow charts them as bars.

MLflow's run charts draw a metric as a line when any run logged it at a step >= 1 and as a bar
chart otherwise; final scores (`test/*`) are one value per run, so they go to step 0. A step's
training metrics are logged once: the resume checkpoint logs them before it saves (so a run
killed right after the save keeps them), and Lightning's own log of that step is then dropped.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from typing_extensions import override

FINAL_PREFIXES = ("test/",)


class TunelabMLFlowLogger(MLFlowLogger):
    """`MLFlowLogger` that logs final (test) metrics at step 0, and a train step's metrics once."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._train_step_logged: tuple | None = None  # (step, metric names) logged last

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
