"""The three training loops `benchmarks/parity.py` times: tunelab, a plain PyTorch loop, HF Trainer.

All three train the same `nn.Module` (tunelab's, built from the same config and seed), on the same
tokenised rows through the same collator, with the same optimiser settings, schedule, gradient
clipping and precision (fp32). Two orders:
    parity:   one fixed permutation (tunelab's epoch-0 order for the seed): the same batches
              for all, with tunelab's AdamW kernel (`optim.implementation`) in every loop.
    defaults: each as a user gets it: tunelab's default batching (length-grouped for
              classification), a random `DataLoader(shuffle=True)` for the plain loop, and the
              Trainer's own random sampler and default optimiser (`adamw_torch_fused`).
Every collated batch is counted (non-padding tokens, sum of squared sequence lengths) and the
time after every optimiser step recorded, so the window after warm-up gives s/step and FLOPs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

CONTENDERS = ("tunelab", "plain", "trainer")


class Counted:
    """A collate function that records, per batch, its real tokens and squared sequence lengths.

    Args:
        collate: the collate function to wrap (None: only `record` batches collated elsewhere).
    """

    def __init__(self, collate: Any = None):
        self.collate, self.tokens, self.squares = collate, [], []

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """Collate `rows` and record the batch."""
        batch = self.collate(rows)
        self.record(batch)
        return batch

    def record(self, batch: dict[str, torch.Tensor]) -> None:
        """Count the batch's non-padding tokens (attention mask; packed rows: every position)."""
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        lengths = mask.sum(1) if mask is not None else torch.full((ids.shape[0],), ids.shape[1])
        self.tokens.append(int(lengths.sum()))
        self.squares.append(int((lengths.double() ** 2).sum()))


class StepTimes:
    """`perf_counter` after each optimiser step."""

    def __init__(self):
        self.times: list[float] = []

    def tick(self) -> None:
        """Record the end of a step."""
        self.times.append(time.perf_counter())

    def window(self, warmup: int, steps: int) -> float:
        """Seconds of steps `warmup + 1` .. `warmup + steps`."""
        return self.times[warmup + steps - 1] - self.times[warmup - 1]


def fixed_order(rows: int, seed: int) -> list[int]:
    """The epoch-0 training order for `seed` (`data.group_by_length=false`)."""
    from datamodules.resumable import epoch_generator, shuffled

    return list(shuffled(rows)(epoch_generator(seed, 0)))


def prepared(run: Any) -> tuple[Any, Any, Any]:
    """Seed, then tunelab's datamodule (set up), module and the training split."""
    import lightning as L

    from tunelab.run.build import build_datamodule, build_module, labels_of

    L.seed_everything(run.seed, verbose=False)
    datamodule = build_datamodule(run)
    datamodule.setup("fit")
    module = build_module(run, labels_of(datamodule))
    return datamodule, module, datamodule.splits["train"]


Timed = tuple[StepTimes, Counted, torch.nn.Module]  # step times, batches, the trained model


def run_tunelab(run: Any) -> Timed:
    """The tunelab pipeline (`run_experiment`), timed by a callback; validation/test off."""
    from lightning.pytorch.callbacks import Callback

    from tunelab.run.pipeline import run_experiment

    times, counted, seen = StepTimes(), Counted(), {}

    class Probe(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            seen["model"] = pl_module.model

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            times.tick()
            counted.record(batch)

    run_experiment(run, callbacks=[Probe()])
    return times, counted, seen["model"]


def run_plain(run: Any, total: int, mode: str) -> Timed:
    """A plain loop: pre-tokenised rows, the same collator, AdamW, linear schedule, clipping."""
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

    from tunelab.run.module import adamw_kernel, param_groups

    datamodule, module, rows = prepared(run)
    model, optim = module.model.train(), run.optim
    counted = Counted(datamodule.train_dataloader().collate_fn)
    order = fixed_order(len(rows), run.seed) if mode == "parity" else None
    loader = DataLoader(
        rows, batch_size=run.data.batch_size, sampler=order, shuffle=order is None,
        collate_fn=counted,
    )  # fmt: skip
    optimizer = torch.optim.AdamW(
        param_groups(model, optim.weight_decay), lr=optim.lr, betas=tuple(optim.betas),
        **adamw_kernel(optim.implementation),
    )  # fmt: skip
    scheduler = get_scheduler("linear", optimizer, int(optim.warmup_ratio * total), total)
    params = [p for p in model.parameters() if p.requires_grad]
    times = StepTimes()
    for batch in loader:
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, run.trainer.gradient_clip_val)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        times.tick()
        if len(times.times) == total:
            break
    return times, counted, model


def run_trainer(run: Any, total: int, mode: str, workdir: Path) -> Timed:
    """The Hugging Face Trainer on the same module, rows and collator."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    datamodule, module, rows = prepared(run)
    counted = Counted(datamodule.train_dataloader().collate_fn)
    times, optim = StepTimes(), run.optim
    order = fixed_order(len(rows), run.seed) if mode == "parity" else None

    class Tick(TrainerCallback):
        def on_step_end(self, *args, **kwargs) -> None:
            times.tick()

    class FixedOrderTrainer(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return order if order is not None else super()._get_train_sampler(*args, **kwargs)

    # parity: tunelab's AdamW kernel (fused by default, else torch's); defaults: the Trainer's own
    kernel = "adamw_torch_fused" if optim.implementation == "fused" else "adamw_torch"
    parity = {"optim": kernel} if mode == "parity" else {}
    args = TrainingArguments(
        output_dir=str(workdir / "trainer"), per_device_train_batch_size=run.data.batch_size,
        max_steps=total, learning_rate=optim.lr, weight_decay=optim.weight_decay,
        adam_beta1=optim.betas[0], adam_beta2=optim.betas[1],
        warmup_steps=int(optim.warmup_ratio * total),
        lr_scheduler_type="linear", max_grad_norm=run.trainer.gradient_clip_val,
        logging_steps=run.trainer.log_every_n_steps, save_strategy="no", eval_strategy="no",
        report_to="none", use_cpu=True, seed=run.seed, remove_unused_columns=False,
        disable_tqdm=True, **parity,
    )  # fmt: skip
    trainer = FixedOrderTrainer(
        model=module.model, args=args, train_dataset=rows, data_collator=counted, callbacks=[Tick()]
    )
    trainer.train()
    return times, counted, module.model
