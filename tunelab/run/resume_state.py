"""Save the full training state often enough to resume, and on SIGINT/SIGTERM.

Lightning's checkpoint holds the trainable weights (PEFT: only those, see `FineTuneModule`),
optimiser, scheduler, loop progress and the training loader's position in the epoch
(`datamodules.resumable`); this callback adds the random number generators (dropout masks) so a
resumed run computes the same losses as one never interrupted.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from typing_extensions import override

from tunelab.base.errors import notice
from tunelab.base.signals import Interrupted, requested
from tunelab.run.checkpoint import damage

RESUME_FILE = "resume.ckpt"


class ResumeCheckpoint(Checkpoint):
    """Keep `<folder>/resume.ckpt` current: every `every_n_steps` steps and after validation.

    A `Checkpoint`, so Lightning runs it after the best-model `ModelCheckpoint` (given before
    it) and the state it saves after validation already knows the new best model.

    When SIGINT or SIGTERM was received (`tunelab.base.signals.graceful_stop`) it saves after the
    batch in progress and raises `Interrupted`.

    Args:
        folder: where `resume.ckpt` is written (replaced atomically).
        every_n_steps: optimiser steps between saves; None saves after validation only.
    """

    def __init__(self, folder: str | Path, every_n_steps: int | None = None):
        self.folder, self.every_n_steps = Path(folder), every_n_steps

    @property
    def path(self) -> Path:
        """The checkpoint a resumed run starts from."""
        return self.folder / RESUME_FILE

    def save(self, trainer: L.Trainer) -> None:
        """Write the checkpoint whole or not at all (`tunelab.run.checkpoint.SafeCheckpointIO`).

        The run's checkpoint IO writes a temporary file in the folder and renames it, so the
        previous `resume.ckpt` stays intact when this one cannot be written (a full disk).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(self.path, weights_only=False)

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
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning restores the loader's position only when it builds the loader after the
        # checkpoint is loaded; the scheduler's `estimated_stepping_batches` builds it before
        # (in `configure_optimizers`), so the saved position is applied here, and the
        # iterator made again from it.
        loop = trainer.fit_loop
        if loop.restarting and loop._combined_loader_states_to_load and loop._data_fetcher:
            loop._load_combined_loader_states()
            iter(loop._data_fetcher)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if _validates_next(trainer):
            return  # the save after that validation follows; state saved here would skip it
        signum = requested().signum
        if signum is not None:
            trainer._logger_connector.update_train_step_metrics()  # log this step before leaving
            self.save(trainer)
            raise Interrupted(signum, self.folder.parent, saved=True)
        step = trainer.global_step
        if self.every_n_steps and step and step % self.every_n_steps == 0:
            # log this step first: killed right after the save, the run would resume past it
            trainer._logger_connector.update_train_step_metrics()
            self.save(trainer)

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


def _validates_next(trainer: L.Trainer) -> bool:
    """Whether validation runs right after this batch.

    A checkpoint saved before that validation, once resumed, would never run it.
    """
    loop = trainer.fit_loop.epoch_loop
    return bool(loop._should_check_val_fx(trainer.fit_loop._data_fetcher))
