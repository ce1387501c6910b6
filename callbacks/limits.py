"""How much of a split the run reads, for callbacks that loop over a split themselves.

`trainer.limit_val_batches` / `limit_test_batches` (and `fast_dev_run`, which Lightning turns
into them) follow Lightning's rule: an int counts batches (`1` is one batch), a float is a share
of the split (`1.0` is all of it). A report, an evaluation or a preview reads no more than that.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from tunelab.base.signals import requested


def split_batches(trainer: Any, stage: str, total: int) -> int:
    """The batches of a `total`-batch split that `stage` (`val`, `test`) reads, as Lightning."""
    limit = getattr(trainer, f"limit_{stage}_batches", 1.0)
    if isinstance(limit, int):
        return min(total, limit)
    return int(total * limit)


def limited_batches(loader: Any, trainer: Any, stage: str) -> Iterator:
    """The first batches of `loader` that `stage` reads under the trainer's limit."""
    return stoppable(islice(loader, split_batches(trainer, stage, len(loader))))


def stoppable(items: Iterable) -> Iterator:
    """`items`, raising `Interrupted` before the next one once SIGINT/SIGTERM was received."""
    for item in items:
        requested().check()
        yield item


def limited_rows(trainer: Any, stage: str, rows: int, batch_size: int) -> int:
    """How many of a split's first `rows` rows fall in the batches `stage` reads."""
    batches = split_batches(trainer, stage, math.ceil(rows / max(batch_size, 1)))
    return min(rows, batches * batch_size)


def first_rows(items: Iterable, trainer: Any, stage: str, batch_size: int, most: int) -> list:
    """At most `most` of `items` (a split's rows in loader order), within the stage's limit."""
    items = list(items)
    return items[: min(most, limited_rows(trainer, stage, len(items), batch_size))]
