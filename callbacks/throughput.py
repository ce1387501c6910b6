"""Training speed and peak memory of one run, for method comparisons."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from typing_extensions import override


def batch_rows(batch: dict[str, Any]) -> int:
    """Rows in a batch (its `input_ids` or `labels` first dimension)."""
    tensor = batch.get("input_ids", batch.get("labels"))
    return int(tensor.shape[0]) if tensor is not None else 0


class Throughput(L.Callback):
    """Training samples per second (training batches only) and peak memory during training.

    Peak memory is the CUDA allocator's peak (`torch.cuda.max_memory_allocated`, reset when
    training starts) on a GPU, else the process's resident set size sampled after every
    training batch (psutil), so it includes whatever the process held before this run.

    Attributes:
        seconds: time spent inside training batches.
        samples: training rows seen.
        peak_memory_mb: the peak, in MiB.
        memory_kind: `cuda_allocated` or `cpu_rss`.
    """

    def __init__(self):
        self.seconds, self.samples, self._start = 0.0, 0, 0.0
        self.peak_memory_mb, self.memory_kind = 0.0, "cpu_rss"

    @property
    def samples_per_s(self) -> float:
        """Training rows per second of training-batch time."""
        return self.samples / self.seconds if self.seconds else 0.0

    def _sample_memory(self, pl_module: L.LightningModule) -> None:
        import torch

        if pl_module.device.type == "cuda":
            self.memory_kind = "cuda_allocated"
            peak = torch.cuda.max_memory_allocated(pl_module.device) / 2**20
        else:
            import psutil

            peak = psutil.Process().memory_info().rss / 2**20
        self.peak_memory_mb = max(self.peak_memory_mb, peak)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import torch

        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seconds += time.perf_counter() - self._start
        self.samples += batch_rows(batch)
        self._sample_memory(pl_module)
