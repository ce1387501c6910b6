r"""A SetFit-style contrastive warm-up: the encoder learns the labels' geometry before the head.

SetFit (Tunstall et al. 2022) first tunes a sentence encoder on pairs of training texts, pulling
the vectors of same-label pairs together and pushing different-label pairs apart (cosine
similarity towards 1 and 0: sentence-transformers' `CosineSimilarityLoss`), then fits a
classifier on the tuned vectors. This callback runs that first phase inside a tunelab run, once,
before the first training step: on pairs drawn from the training split, on the vector the
classification head reads (BERT's pooled `[CLS]`, or the token mean under `task.pooling=mean`),
through the parameters the method trains. The run's own training then fits the head (and goes on
tuning the encoder) as configured.

    python run.py experiment=freeze_minilm_banking77 task.pooling=mean \
        '+callbacks=[{_target_: callbacks.contrastive_warmup.ContrastiveWarmup}]'

Logged at step 0: `warmup/pair_loss_start` and `warmup/pair_loss_end`, the loss on the first
(up to) 512 pairs before and after the warm-up, without dropout. A resumed run does not warm up
again: its checkpoint holds the warmed-up weights.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from callbacks.limits import stoppable
from tunelab.base.pooling import classifier_inputs


def draw_pairs(labels: list[int], pairs_per_row: int, seed: int) -> np.ndarray:
    """Rows `(first, second, same)`: per row and round, one same-label and one other-label pair.

    SetFit's sampling: each training row is paired `pairs_per_row` times with a random row of its
    label and a random row of another label, so the pairs are half positive; shuffled.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    by_label = {label: np.flatnonzero(labels == label) for label in np.unique(labels)}
    pairs = []
    for _ in range(pairs_per_row):
        for row, label in enumerate(labels):
            pairs.append((row, rng.choice(by_label[label]), 1))
            other = rng.integers(len(labels))
            while labels[other] == label and len(by_label) > 1:
                other = rng.integers(len(labels))
            pairs.append((row, other, 0))
    pairs = np.asarray(pairs)
    return pairs[rng.permutation(len(pairs))]


@rank_zero_only
def say(message: str) -> None:
    """One progress line on stderr (the warm-up runs before Lightning's progress bar starts)."""
    print(message, file=sys.stderr, flush=True)


class ContrastiveWarmup(L.Callback):
    """Tune the encoder on same/other-label pairs before the first training step.

    Args:
        pairs_per_row: rounds of pairing; each gives every training row one same-label and one
            other-label pair (SetFit's `num_iterations`; 1 costs about two epochs of forwards).
        lr: AdamW learning rate of the warm-up (SetFit's body default).
        batch_size: pairs per step (each step reads twice as many texts).
        seed: the pairs' random draw.
    """

    def __init__(
        self, pairs_per_row: int = 1, lr: float = 2e-5, batch_size: int = 16, seed: int = 0
    ):
        self.pairs_per_row, self.lr = pairs_per_row, lr
        self.batch_size, self.seed = batch_size, seed

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step > 0:  # resumed: the checkpoint holds the warmed-up weights
            return
        rows = trainer.datamodule.splits["train"]
        pairs = draw_pairs(rows["labels"], self.pairs_per_row, self.seed)
        batches = [pairs[i : i + self.batch_size] for i in range(0, len(pairs), self.batch_size)]
        probe = pairs[:512]
        start = self.probe_loss(trainer, pl_module, probe)
        trainable = [p for p in pl_module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=self.lr)
        say(
            f"contrastive warm-up: {len(pairs):,} pairs in {len(batches):,} steps before the "
            f"first epoch; pair loss {start:.4f}"
        )
        pl_module.train()
        for step, batch in enumerate(stoppable(batches), start=1):
            optimizer.zero_grad(set_to_none=True)
            self.pair_loss(trainer, pl_module, batch).backward()
            optimizer.step()
            if step % max(len(batches) // 4, 1) == 0 and step < len(batches):
                say(f"contrastive warm-up: step {step:,}/{len(batches):,}")
        optimizer.zero_grad(set_to_none=True)
        end = self.probe_loss(trainer, pl_module, probe)
        say(f"contrastive warm-up done: pair loss {start:.4f} -> {end:.4f}")
        pl_module.train()
        if trainer.logger is not None:
            metrics = {"warmup/pair_loss_start": start, "warmup/pair_loss_end": end}
            trainer.logger.log_metrics(metrics, step=0)

    def probe_loss(self, trainer: L.Trainer, pl_module: L.LightningModule, pairs: Any) -> float:
        """The mean pair loss over `pairs`, without dropout or gradients."""
        pl_module.eval()
        with torch.no_grad():
            chunks = [pairs[i : i + 64] for i in range(0, len(pairs), 64)]
            total = sum(float(self.pair_loss(trainer, pl_module, c)) * len(c) for c in chunks)
        return total / len(pairs)

    @staticmethod
    def pair_loss(trainer: L.Trainer, pl_module: L.LightningModule, pairs: Any) -> torch.Tensor:
        """Squared error between the pairs' cosine similarity and 1 (same label) or 0."""
        from transformers import DataCollatorWithPadding

        datamodule = trainer.datamodule
        rows = datamodule.splits["train"].select([*pairs[:, 0], *pairs[:, 1]])
        rows = rows.remove_columns("labels")  # the model's own loss is not wanted here
        batch = DataCollatorWithPadding(datamodule.tokenizer)(list(rows))
        batch = {k: v.to(pl_module.device) for k, v in batch.items()}
        with (
            classifier_inputs(pl_module.model, keep_graph=True) as found,
            trainer.precision_plugin.forward_context(),
        ):
            pl_module(**batch)
        vectors = found[0].float()
        first, second = vectors[: len(pairs)], vectors[len(pairs) :]
        target = torch.as_tensor(pairs[:, 2], dtype=torch.float32, device=vectors.device)
        return F.mse_loss(F.cosine_similarity(first, second), target)
