"""This process's rank before Lightning knows it, from what the launcher put in the environment.

Lightning sets every process's rank once its strategy starts (inside `trainer.fit`), but a run
makes its folder and its MLflow logger before that. The launchers all say the rank in the
environment: Lightning's own launcher (`python run.py ... trainer.devices=N` re-runs the command
with `LOCAL_RANK`/`NODE_RANK`), torchrun (`RANK`) and SLURM's srun (`SLURM_PROCID`).
"""

from __future__ import annotations

import os


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
