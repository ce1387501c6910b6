"""Length-grouped batching: every row once per epoch, little padding, batches in random order."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from datamodules.batching import LengthGroupedBatches
from datamodules.classification import ClassificationDataModule
from datamodules.resumable import EpochOrder
from datamodules.text_classification import TextClassification


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


def _padding(order: list[int], lengths: list[int], size: int) -> int:
    """Pad tokens a dynamic-padding collator adds when batching `order`."""
    return sum(
        max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b)
        for b in _batches(order, size)
    )


def test_grouped_order_is_a_permutation_with_far_less_padding():
    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(5, 20)] * 9 + [rng.randint(40, 90)]) for _ in range(1003)]
    torch.manual_seed(0)
    order = list(LengthGroupedBatches(lengths, batch_size=32))
    assert sorted(order) == list(range(len(lengths)))
    shuffled = rng.sample(range(len(lengths)), len(lengths))
    assert _padding(order, lengths, 32) < 0.3 * _padding(shuffled, lengths, 32)


def test_batches_come_in_random_order_and_the_short_batch_last():
    lengths = list(range(1, 101))  # 100 rows, batch 8: 12 full batches and one of 4
    torch.manual_seed(1)
    first = list(LengthGroupedBatches(lengths, batch_size=8))
    second = list(LengthGroupedBatches(lengths, batch_size=8))
    assert first != second  # a new order every epoch
    for order in (first, second):
        maxima = [max(lengths[i] for i in b) for b in _batches(order, 8)[:-1]]
        assert maxima != sorted(maxima, reverse=True)  # not one long-to-short run
        assert len(_batches(order, 8)[-1]) == 4
    torch.manual_seed(1)
    assert list(LengthGroupedBatches(lengths, batch_size=8)) == first  # seeded: reproducible


def _datamodule(tiny_bert: Path, intent_data: Path, **settings) -> ClassificationDataModule:
    data = TextClassification(
        _target_="datamodules.text_classification.TextClassification",
        name="intents",
        root=str(intent_data),
        path="intents",
        label_column="category",
        **settings,
    )
    return ClassificationDataModule(data=data, tokenizer=str(tiny_bert), max_length=16, seed=42)


def test_datamodule_sorts_evaluation_and_groups_training(tiny_bert: Path, intent_data: Path):
    grouped = _datamodule(tiny_bert, intent_data, batch_size=8, eval_batch_size=8)
    grouped.setup("fit")
    sizes = [int(b["attention_mask"].sum(1).max()) for b in grouped.val_dataloader()]
    assert sizes == sorted(sizes)
    rows = sum(len(b["labels"]) for b in grouped.train_dataloader())
    assert rows == len(grouped.splits["train"])
    plain = _datamodule(tiny_bert, intent_data, group_by_length=False)
    plain.setup("fit")
    assert isinstance(plain.train_dataloader().sampler, EpochOrder)  # shuffled, resumable
