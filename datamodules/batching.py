"""Length-grouped batch order for classification: similar lengths per batch, little padding."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from datasets import Dataset
from torch.utils.data import Sampler


class LengthGroupedBatches(Sampler[int]):
    """Training order whose batches hold texts of similar length, the batches in random order.

    transformers' `LengthGroupedSampler` draws random megabatches of 50 batches and sorts each by
    length; this cuts its order into batches and shuffles them over the whole epoch, so the model
    does not see a long-to-short run inside every megabatch. A short last batch stays last (the
    loader cuts batches from consecutive indices). `generator` (training: one seeded from the
    run's seed and the epoch, see `datamodules.resumable`) or else the torch RNG draws the order.

    Args:
        lengths: token count of every row.
        batch_size: the loader's batch size.
        generator: the random source of the order (None: the global torch RNG).
    """

    def __init__(
        self, lengths: list[int], batch_size: int, generator: torch.Generator | None = None
    ):
        self.lengths, self.batch_size, self.generator = lengths, batch_size, generator

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        from transformers.trainer_pt_utils import LengthGroupedSampler

        order = list(
            LengthGroupedSampler(self.batch_size, lengths=self.lengths, generator=self.generator)
        )
        size = self.batch_size
        full = len(order) // size * size
        batches = [order[i : i + size] for i in range(0, full, size)]
        for b in torch.randperm(len(batches), generator=self.generator).tolist():
            yield from batches[b]
        yield from order[full:]


def grouped(ds: Dataset, batch_size: int) -> Callable[[torch.Generator], list[int]]:
    """The length-grouped training order of a tokenised split, drawn from a given generator."""
    lengths = [len(ids) for ids in ds["input_ids"]]
    return lambda generator: list(LengthGroupedBatches(lengths, batch_size, generator))


def length_grouped_sampler(ds: Dataset, batch_size: int, shuffle: bool) -> Iterable[int]:
    """Indices that put texts of similar token length in the same batch.

    Training: `LengthGroupedBatches` (random, grouped). Evaluation order changes no metric, so
    it is simply sorted by length.

    Args:
        ds: a tokenised split with an `input_ids` column.
        batch_size: the loader's batch size.
        shuffle: training (random, grouped) or evaluation (sorted).
    """
    lengths = [len(ids) for ids in ds["input_ids"]]
    if not shuffle:
        return sorted(range(len(lengths)), key=lengths.__getitem__)
    return LengthGroupedBatches(lengths, batch_size)
