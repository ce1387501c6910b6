"""A training order a resumed run replays exactly: drawn from (seed, epoch), skipping what trained.

Lightning restores the loops of an interrupted run (`fit(ckpt_path=...)`), but a plain loader
would start its epoch over: batches already trained would be seen twice and the epoch's last
ones never. Here the order of every epoch depends on the seed and the epoch number only (never
on the global RNG), and the loader is *stateful* in Lightning's sense: the checkpoint records
the epoch and how many of its batches trained, and the restored loader skips exactly those.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

Order = Callable[[torch.Generator], list[int]]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A private generator seeded from (seed, epoch): the order never touches the global RNG."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class EpochOrder(Sampler[int]):
    """Row indices of one epoch, drawn by `order` from a (seed, epoch) generator.

    Lightning calls `set_epoch` before every epoch. `resume_at(epoch, batches)` makes the next
    pass over `epoch` skip its first `batches` batches (batches are consecutive runs of
    `batch_size` indices of this order, cut by the loader).

    Args:
        order: draws the epoch's indices from a generator (a permutation of the rows).
        rows: number of rows.
        batch_size: the loader's batch size.
        seed: the run's seed.
    """

    def __init__(self, order: Order, rows: int, batch_size: int, seed: int):
        self.order, self.rows, self.batch_size, self.seed = order, rows, batch_size, seed
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next pass draws (called by Lightning)."""
        self.epoch = epoch

    def resume_at(self, epoch: int, batches: int) -> None:
        """Make the next pass over `epoch` start after its first `batches` batches."""
        self.epoch, self._resume = epoch, (epoch, batches)

    def __len__(self) -> int:
        return self.rows

    def __iter__(self) -> Iterator[int]:
        indices = self.order(epoch_generator(self.seed, self.epoch))
        skip = 0
        if self._resume is not None:
            epoch, batches = self._resume
            skip = batches * self.batch_size if epoch == self.epoch else 0
            self._resume = None
        yield from indices[skip:]


def shuffled(rows: int) -> Order:
    """A uniformly random permutation of `rows` rows."""
    return lambda generator: torch.randperm(rows, generator=generator).tolist()


class ResumableLoader(DataLoader):
    """A training `DataLoader` over an `EpochOrder` that Lightning saves and restores.

    `state_dict` records the epoch and how many of its batches trained (`trained()`, read from
    the trainer's progress: the loader itself runs ahead of training by its prefetching);
    `load_state_dict` makes the next pass skip them.

    Args:
        dataset: the training rows.
        sampler: their `EpochOrder`.
        trained: the number of batches of the current epoch that trained.
        **kwargs: the usual `DataLoader` arguments (batch size, collate function, workers).
    """

    def __init__(self, dataset: Any, sampler: EpochOrder, trained: Callable[[], int], **kwargs):
        self.trained = trained
        super().__init__(dataset, sampler=sampler, generator=torch.Generator(), **kwargs)

    def state_dict(self) -> dict[str, int]:
        """The position in the epoch's batch order, for the checkpoint."""
        return {"epoch": self.sampler.epoch, "batches": int(self.trained())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume the epoch's order after the batches that trained."""
        self.sampler.resume_at(int(state["epoch"]), int(state["batches"]))


def trained_batches(datamodule: Any) -> Callable[[], int]:
    """How many batches of the current epoch trained, read from the datamodule's trainer."""

    def count() -> int:
        trainer = getattr(datamodule, "trainer", None)
        if trainer is None:
            return 0
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed

    return count


def training_loader(datamodule: Any, dataset: Any, order: Order, **kwargs: Any) -> DataLoader:
    """The resumable training loader of a datamodule (its `seed` seeds every epoch's order)."""
    from datamodules.sharding import shard_for_ranks  # DDP: this process's block of each batch

    sampler = EpochOrder(order, len(dataset), kwargs["batch_size"], datamodule.seed)
    sampler = shard_for_ranks(sampler, datamodule, kwargs["batch_size"])
    return ResumableLoader(dataset, sampler, trained_batches(datamodule), **kwargs)
