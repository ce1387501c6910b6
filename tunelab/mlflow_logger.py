"""Lightning's MLflow logger, with test metrics logged at step 0 so MLflow charts them as bars.

MLflow's run charts draw a metric as a line when any run logged it at a step >= 1 and as a bar
chart otherwise; final scores (`test/*`) are one value per run, so they go to step 0.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from typing_extensions import override

FINAL_PREFIXES = ("test/",)


class TunelabMLFlowLogger(MLFlowLogger):
    """`MLFlowLogger` that logs final (test) metrics at step 0."""

    @override
    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        final = [str(k).startswith(FINAL_PREFIXES) for k in metrics if k != "epoch"]
        if final and all(final):  # Lightning adds `epoch` to every batch of metrics
            step = 0
        super().log_metrics(metrics, step)
