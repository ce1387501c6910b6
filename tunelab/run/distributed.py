"""Rank awareness before Lightning knows the ranks: who writes, and the one run folder.

Lightning sets every process's rank once its strategy starts (inside `trainer.fit`), but a run
makes its folder and its MLflow logger before that. The launchers all say the rank in the
environment: Lightning's own launcher (`python run.py ... trainer.devices=N` re-runs the command
with `LOCAL_RANK`/`NODE_RANK`), torchrun (`RANK`) and SLURM's srun (`SLURM_PROCID`). Rank 0 makes
the timestamped folder and tells the processes it launches through `TUNELAB_RUN_DIR`; with
torchrun or srun, where every process starts at once, Lightning's `ModelCheckpoint` broadcasts
rank 0's checkpoint folder, and the other ranks write nothing else.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

RUN_DIR_ENV = "TUNELAB_RUN_DIR"
RESUME_ENV = "TUNELAB_RESUME"


def env_rank() -> int:
    """This process's global rank as the launcher's environment gives it (0 when alone).

    `RANK` (torchrun), `SLURM_PROCID` (srun) and `JSM_NAMESPACE_RANK` (LSF) are global;
    Lightning's launcher gives `LOCAL_RANK` and, on nodes after the first, `NODE_RANK`.
    """
    for key in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")) or 0)
    return local + node * 1_000  # any node after the first is never rank 0


def is_rank_zero() -> bool:
    """Whether this process is the one that logs, writes and prints."""
    return env_rank() == 0


def claim_rank() -> bool:
    """Tell Lightning's rank-zero guards (loggers, prints) this process's rank; True on rank 0.

    Lightning reads the environment at import, but misses `NODE_RANK` (a second node's first
    process would log as rank 0 until the strategy starts); it overwrites this with the true
    global rank once the strategy is set up.
    """
    from lightning.pytorch.utilities import rank_zero_only

    rank = env_rank()
    if rank != 0 or getattr(rank_zero_only, "rank", 0) == 0:
        rank_zero_only.rank = rank
    return rank == 0


def shared_run_dir(planned: Path | None, make: Callable[[Path | None], Path]) -> Path:
    """The run folder all ranks agree on; only rank 0 creates it.

    Args:
        planned: the caller's folder (e.g. a sweep trial's), or None for a new timestamped one.
        make: makes the folder unique and creates it (`tunelab.run.pipeline.make_run_dir`).

    Returns:
        On rank 0, the created folder (also put in `TUNELAB_RUN_DIR` for the processes it
        launches); on the others, rank 0's folder when the launcher passed it, else `planned`
        or a placeholder that is never written to.
    """
    if claim_rank():
        folder = make(planned)
        os.environ[RUN_DIR_ENV] = str(folder.resolve())
        return folder
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    return planned or Path("outputs") / f"rank_{env_rank()}_unused"


def rank_zero_previous(select: Callable[[], Any], build: Callable[..., Any]) -> Any:
    """The interrupted run to continue (`tunelab.run.resume.select`), as rank 0 decided it.

    Rank 0 decides and records the decision in `TUNELAB_RESUME` for the processes it launches
    (which start after it marked the run running, and so would not choose it themselves);
    processes started together by torchrun or srun decide alike from the same folders.

    Args:
        select: the decision (`tunelab.run.resume.select` for this run).
        build: makes the decision's object from its fields (`tunelab.run.resume.Previous`).
    """
    if is_rank_zero():
        previous = select()
        os.environ[RESUME_ENV] = json.dumps(asdict(previous), default=str) if previous else ""
        return previous
    if RESUME_ENV not in os.environ:
        return select()
    raw = os.environ[RESUME_ENV]
    if not raw:
        return None
    fields = json.loads(raw)
    return build(**(fields | {"run_dir": Path(fields["run_dir"])}))


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
