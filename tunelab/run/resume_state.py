"""Save the full training state often enough to resume, and on SIGINT/SIGTERM.

Lightning's checkpoint holds the trainable weights (PEFT: only those, see `FineTuneModule`),
optimiser, scheduler, loop progress and the training loader's position in the epoch
(`datamodules.resumable`); this callback adds the random number generators (dropout masks) so a
resumed run computes the same losses as one never interrupted.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from typing_extensions import override

from tunelab.base.errors import TunelabError, notice
from tunelab.base.signals import Interrupted, requested
from tunelab.run.checkpoint import damage

RESUME_FILE = "resume.ckpt"


class ResumeCheckpoint(Checkpoint):
    """Keep `<folder>/resume.ckpt` current: every `every_n_steps` steps and after validation.

    A `Checkpoint`, so Lightning runs it after the best-model `ModelCheckpoint` (given before
    it) and the state it saves after validation already knows the new best model.

    A step's state is written when the step ends (`resume.ckpt.staged`), the point Lightning
    restores from, but becomes `resume.ckpt` only when the next batch starts: by then Lightning
    has logged the step's metrics and run any validation due after it, so a run killed in
    between resumes from the previous checkpoint and logs the step again instead of skipping
    it, and a state saved before a validation (which the resumed run would skip) is replaced
    by the one saved after it.

    When SIGINT or SIGTERM was received (`tunelab.base.signals.graceful_stop`) it saves after the
    batch in progress and raises `Interrupted`.

    Args:
        folder: where `resume.ckpt` is written (replaced atomically).
        every_n_steps: optimiser steps between saves; None saves after validation only.
        resume_from: the checkpoint this process continues from (`trainer.fit(ckpt_path)`), which
            every process must share.
    """

    def __init__(
        self, folder: str | Path, every_n_steps: int | None = None, resume_from: str | None = None
    ):
        self.folder, self.every_n_steps = Path(folder), every_n_steps
        self.resume_from, self.staged = resume_from, False

    @property
    def path(self) -> Path:
        """The checkpoint a resumed run starts from."""
        return self.folder / RESUME_FILE

    @property
    def staged_path(self) -> Path:
        """A step's state waiting for the step to be logged."""
        return self.folder / f"{RESUME_FILE}.staged"

    def save(self, trainer: L.Trainer, path: Path | None = None) -> None:
        """Write the checkpoint whole or not at all (`tunelab.run.checkpoint.SafeCheckpointIO`).

        The run's checkpoint IO writes a temporary file in the folder and renames it, so the
        previous `resume.ckpt` stays intact when this one cannot be written (a full disk).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(path or self.path, weights_only=False)
        if path is None:  # a newer state than any staged one
            self._drop_staged(trainer)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # the process group exists now: every process writes where rank 0 does (sharded
        # checkpoints), and all must continue from the checkpoint rank 0 chose
        self.folder = Path(trainer.strategy.broadcast(str(self.folder), src=0))
        chosen = trainer.strategy.broadcast(self.resume_from, src=0)
        if not trainer.strategy.reduce_boolean_decision(chosen == self.resume_from, all=True):
            raise TunelabError(
                f"the processes disagree on the checkpoint to resume from (rank 0: {chosen}, "
                f"rank {trainer.global_rank}: {self.resume_from}); start them again with "
                "resume=<run folder> so that all continue the same run"
            )

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # restored: a best checkpoint gone or damaged since is forgotten, not tested later
        for callback in trainer.checkpoint_callbacks:
            path = getattr(callback, "best_model_path", "")
            if path and path != str(self.path):
                reason = damage(path) if Path(path).exists() else "missing"
                if reason is not None:
                    forget_best(callback, Path(path), reason, trainer.is_global_zero)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        periodic = self.every_n_steps and step and step % self.every_n_steps == 0
        if periodic or requested().signum is not None:
            self.save(trainer, self.staged_path)
            self.staged = True

    @override
    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._commit_or_stop(trainer)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._commit_or_stop(trainer)  # the last step's state, when it was staged

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:  # mid-epoch validation
            self._save_or_stop(trainer)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after the epoch's validation and the best-model checkpoint (saved on this hook)
        self._save_or_stop(trainer)

    @override
    def on_test_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        requested().check()  # SIGTERM while testing: stop now; the rerun tests again

    def _save_or_stop(self, trainer: L.Trainer) -> None:
        self.save(trainer)
        self._stop_if_requested()

    def _commit_or_stop(self, trainer: L.Trainer) -> None:
        if not self.staged:
            return
        self.staged = False
        if trainer.is_global_zero and self.staged_path.exists():
            replace(self.staged_path, self.path)
        self._stop_if_requested()

    def _drop_staged(self, trainer: L.Trainer) -> None:
        self.staged = False
        if trainer.is_global_zero and self.staged_path.exists():
            remove(self.staged_path)

    def _stop_if_requested(self) -> None:
        if requested().signum is not None:
            raise Interrupted(requested().signum, self.folder.parent, saved=True)

    @override
    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {  # tensors and plain values only: checkpoints load with weights_only=True
            "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, np.asarray(keys), pos, has_gauss, gauss))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


def replace(source: Path, target: Path) -> None:
    """Put `source` (a file, or a DeepSpeed checkpoint folder) in `target`'s place."""
    if source.is_dir() and target.exists():
        remove(target)
    source.replace(target)


def remove(path: Path) -> None:
    """Delete a checkpoint file or folder."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def forget_best(callback: Any, path: Path, reason: str, rank_zero: bool = True) -> None:
    """Set a damaged best checkpoint aside and let the next validations choose a new best."""
    callback.best_k_models, callback.best_model_path = {}, ""
    callback.best_model_score, callback.kth_best_model_path = None, ""
    if not rank_zero:
        return
    if path.exists():
        path.replace(path.with_name(f"{path.name}.corrupt"))
    notice(
        f"best checkpoint {path} is unreadable ({reason}): kept as {path.name}.corrupt; the best "
        "of the validations still to come is kept instead (if none comes, the final weights are "
        "tested)"
    )
