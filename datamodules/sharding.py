"""Each process's share of the training order under DDP/FSDP/DeepSpeed: the same global batches.

Lightning would wrap a custom training sampler in a `DistributedSamplerWrapper` that reshuffles
it, losing both the length grouping and the resumable (seed, epoch) order. `RankShard` is a
`DistributedSampler` (so Lightning leaves it alone) that cuts the one order every process draws
into global batches of `batch_size x world_size` rows and gives process r the r-th block of
each: together the processes train on exactly the batches one process would with the global
batch size, and each process's block of a length-grouped order is one length group.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DistributedSampler, Sampler


def rank_blocks(order: list[int], batch_size: int, world: int, rank: int) -> list[int]:
    """Process `rank`'s rows of `order`: its block of every global batch.

    The order is padded with its first rows to a multiple of `world` (as `DistributedSampler`
    does), so every process runs the same number of steps; the last, short global batch is
    split evenly.
    """
    total = math.ceil(len(order) / world) * world
    padded = order + order[: total - len(order)]
    step = batch_size * world
    full = len(padded) // step * step
    mine: list[int] = []
    for start in range(0, full, step):
        mine += padded[start + rank * batch_size : start + (rank + 1) * batch_size]
    tail = padded[full:]
    share = len(tail) // world
    return mine + tail[rank * share : (rank + 1) * share]


class RankShard(DistributedSampler):
    """One process's share of a training sampler's order (see module doc).

    `set_epoch` goes to the wrapped sampler; `resume_at(epoch, batches)` skips this process's
    first `batches` batches of `epoch` (each process trained as many). Other attributes (the
    epoch a `ResumableLoader` saves) are read from the wrapped sampler.

    Args:
        inner: the sampler every process draws the same global order from.
        batch_size: the per-process batch size.
        world: the number of processes.
        rank: this process's global rank.
    """

    def __init__(self, inner: Sampler[int], batch_size: int, world: int, rank: int):
        # DistributedSampler.__init__ needs a dataset and a process group; only its type matters
        self.inner, self.batch_size = inner, batch_size
        self.num_replicas, self.rank, self.shuffle, self.drop_last = world, rank, False, False
        self._skip: tuple[int, int] | None = None

    def __len__(self) -> int:
        return math.ceil(len(self.inner) / self.num_replicas)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        mine = rank_blocks(list(self.inner), self.batch_size, self.num_replicas, self.rank)
        skip = 0
        if self._skip is not None:
            epoch, batches = self._skip
            skip = batches * self.batch_size if epoch == self.epoch else 0
            self._skip = None
        return iter(mine[skip:])

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch (Lightning calls this before every epoch)."""
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    @property
    def epoch(self) -> int:  # type: ignore[override]
        """The wrapped sampler's epoch."""
        return int(getattr(self.inner, "epoch", 0))

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.set_epoch(value)

    def resume_at(self, epoch: int, batches: int) -> None:
        """Make the next pass over `epoch` start after this process's first `batches` batches."""
        self.set_epoch(epoch)
        self._skip = (epoch, batches)


def shard_for_ranks(sampler: Any, datamodule: Any, batch_size: int) -> Any:
    """`sampler` itself on one process, else this process's `RankShard` of it.

    Args:
        sampler: the training sampler (the same order on every process).
        datamodule: the LightningDataModule; its `trainer` says the world size and rank.
        batch_size: the per-process batch size.
    """
    trainer = getattr(datamodule, "trainer", None)
    world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
    if world <= 1:
        return sampler
    return RankShard(sampler, batch_size, world, int(trainer.global_rank))
