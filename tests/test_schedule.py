"""The schedule's length is counted from the datamodule's loader, as Lightning would count it."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tunelab.run.schedule import planned_steps


class Rows(L.LightningDataModule):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(50, 1)), batch_size=4)  # 13 batches


class Linear(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        self.planned = planned_steps(self.trainer)  # before the trainer built its loader
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(
    "settings",
    [
        {"max_epochs": 3},
        {"max_epochs": 3, "accumulate_grad_batches": 2},  # 7 steps an epoch (rounded up)
        {"max_epochs": 2, "limit_train_batches": 5},
        {"max_epochs": 2, "limit_train_batches": 0.5},
        {"max_epochs": 4, "max_steps": 20},  # the step cap wins
        {"max_epochs": -1, "max_steps": 9},
    ],
)
def test_planned_steps_equal_lightnings_estimate_and_the_steps_taken(settings: dict):
    trainer = L.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, **settings
    )
    module = Linear()
    trainer.fit(module, datamodule=Rows())
    assert module.planned == trainer.estimated_stepping_batches == trainer.global_step
