"""torchmetrics a task may report that torchmetrics does not have (imported by hooks, lazily)."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class InScopeAccuracy(Metric):
    """Accuracy over the rows whose true class is not the out-of-scope class."""

    def __init__(self, out_of_scope: int):
        super().__init__()
        self.out_of_scope = out_of_scope
        self.add_state("correct", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Count the in-scope rows and the correct ones among them."""
        keep = target != self.out_of_scope
        self.correct += (preds[keep] == target[keep]).sum()
        self.total += keep.sum()

    def compute(self) -> torch.Tensor:
        """Correct in-scope rows over in-scope rows."""
        return self.correct.float() / self.total.clamp(min=1)


class ClassRecall(Metric):
    """Recall of one class (the out-of-scope class: how many out-of-scope rows are caught)."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index
        self.add_state("caught", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Count the class's rows and those predicted as it."""
        mine = target == self.index
        self.caught += (preds[mine] == self.index).sum()
        self.total += mine.sum()

    def compute(self) -> torch.Tensor:
        """Caught rows over the class's rows."""
        return self.caught.float() / self.total.clamp(min=1)
