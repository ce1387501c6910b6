"""Processes of one run: the one run folder and the one checkpoint they continue from.

Rank 0 (`tunelab.base.ranks`) makes the run's folder, its MLflow run and its `run.json` before
`trainer.fit`. The processes Lightning's launcher starts (`trainer.devices=N` re-runs the
command) start after that, inside `fit`, when rank 0 has marked its run `running` with its own
pid: each finds the run its parent process marked and continues from the same folder and
checkpoint. Processes started together (torchrun, srun) choose alike from the same folders.
The checkpoint `fit` loads is fixed before Lightning's process group exists, so it cannot be
broadcast; once it exists, the resume callback broadcasts rank 0's folder and checks that every
process loaded rank 0's checkpoint (`tunelab.run.resume_state.ResumeCheckpoint.setup`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.base.ranks import env_rank, is_rank_zero
from tunelab.base.schema import RunConfig
from tunelab.run.resume import Previous, previous_of, read_state, run_folders


def shared_run_dir(planned: Path | None, make: Callable[[Path | None], Path]) -> Path:
    """This process's run folder for a new run; only rank 0 creates it.

    Args:
        planned: the caller's folder (e.g. a sweep trial's), or None for a new timestamped one.
        make: makes the folder unique and creates it (`tunelab.run.build.make_run_dir`).

    Returns:
        On rank 0, the created folder; on the others (started with it by torchrun or srun),
        `planned` or a placeholder never written to: the checkpoint callbacks take rank 0's
        folder by broadcast.
    """
    if is_rank_zero():
        return make(planned)
    return planned or Path("outputs") / f"rank_{env_rank()}_unused"


def started_by_parent(run: RunConfig) -> Previous | None:
    """The run this process's parent marked running: rank 0's, when its launcher started us."""
    parent, host = os.getppid(), socket.gethostname()
    for folder in run_folders(run):
        state = read_state(folder) or {}
        if state.get("status") == "running" and (state.get("host"), state.get("pid")) == (
            host,
            parent,
        ):
            return previous_of(folder, state)
    return None


def rank_zero_previous(run: RunConfig, select: Callable[[], Previous | None]) -> Previous | None:
    """The run to continue (`tunelab.run.resume.select`), as rank 0 decided it.

    A process started by rank 0 (Lightning's launcher) continues rank 0's run, new or resumed:
    rank 0 has marked it running, so `select` would not choose it. Processes started together
    decide alike from the same folders.
    """
    if is_rank_zero():
        return select()
    launched = started_by_parent(run)
    return launched if launched is not None else select()


def exportable(trainer: Any, module: Any, best: str | None) -> Any:
    """The module rank 0 exports: `module`, or under FSDP/DeepSpeed the best checkpoint, whole.

    A sharded module holds only its process's part of the weights, so rank 0 cannot save it
    alone; Lightning's FSDP checkpoint is a full state dict, and a DeepSpeed checkpoint folder
    is consolidated into one file first. The checkpoint is loaded on the CPU.
    """
    sharded = any(s in type(trainer.strategy).__name__ for s in ("FSDP", "DeepSpeed"))
    if not sharded or not best:
        return module
    from tunelab.run.checkpoint import load_module

    path = Path(best)
    if path.is_dir():  # DeepSpeed: one folder of shards per checkpoint
        from lightning.pytorch.utilities.deepspeed import (
            convert_zero_checkpoint_to_fp32_state_dict,
        )

        whole = path.with_name(f"{path.name}.consolidated.ckpt")
        convert_zero_checkpoint_to_fp32_state_dict(str(path), str(whole))
        path = whole
    return load_module(path)
