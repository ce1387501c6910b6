"""Time to first step: seconds from process start to the end of the first optimiser step."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from typing_extensions import override

METRIC = "perf/time_to_first_step_s"


def process_age_s() -> float:
    """Seconds since this process was started (by the OS clock, so imports count too)."""
    import psutil

    return time.time() - psutil.Process().create_time()


class TimeToFirstStep(L.Callback):
    """Log `perf/time_to_first_step_s` once, when a fit's first optimiser step has finished.

    The clock starts when the process does (`psutil.Process().create_time()`), so the value
    covers interpreter start, imports, config validation, data preparation, model loading and
    the first step itself. A run that resumes past step 0 logs nothing: its first step is not a
    fresh start. The metric goes to every logger of the trainer (MLflow in a tunelab run), at
    step 1, whatever `trainer.log_every_n_steps` is.

    Attributes:
        seconds: the value logged (None until then).
    """

    def __init__(self):
        self.seconds: float | None = None
        self._armed = False

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._armed = self.seconds is None and trainer.global_step == 0

    @override
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self._armed or trainer.global_step < 1:  # still accumulating gradients
            return
        self._armed = False
        self.seconds = process_age_s()
        for logger in trainer.loggers:
            logger.log_metrics({METRIC: self.seconds}, step=trainer.global_step)
