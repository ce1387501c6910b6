"""Checks of the machine a run starts on, before any data or model is loaded.

What the config cannot say by itself: whether a GPU the recipe asks for is there, whether the
output folder can be written, and whether the MLflow store can be reached and is a database.
Each problem names the setting and the fix; they join the run's other problems in one error.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tunelab.base.schema import CUDA_ACCELERATORS, RunConfig
from tunelab.tracking.store import absolute_uri, sqlite_file

SQLITE_MAGIC = b"SQLite format 3\x00"


def check_machine(run: RunConfig, problems: list[str]) -> None:
    """Every check, in the order a user would fix them; each problem is appended."""
    for check in (check_length, check_accelerator, check_output_root):
        check(run, problems)
    check_tracking_uri(run.logger.tracking_uri, problems)


def check_length(run: RunConfig, problems: list[str]) -> None:
    """`trainer.max_epochs=0` or `trainer.max_steps=0` would train nothing and report it."""
    problems += [
        f"trainer.{key}=0 trains nothing; use trainer.{key}>=1 (or -1 for no limit)"
        for key in ("max_epochs", "max_steps")
        if getattr(run.trainer, key) == 0
    ]


def check_accelerator(run: RunConfig, problems: list[str]) -> None:
    """A recipe asking for a CUDA GPU on a machine without one says so, with the CPU fix."""
    if run.trainer.accelerator not in CUDA_ACCELERATORS:
        return
    import torch

    if torch.cuda.is_available():
        return
    problems.append(
        f"trainer.accelerator={run.trainer.accelerator}: experiment '{run.name}' asks for a "
        "CUDA GPU (its trainer preset, e.g. trainer=gpu in experiments/"
        f"{run.name}.yaml), but torch sees none (torch.cuda.is_available() is False).\n"
        f"Fix: run on this machine's CPU with {cpu_overrides(run)} (slow for a 7B model), "
        "or start it on a machine with a CUDA GPU"
    )


def cpu_overrides(run: RunConfig) -> str:
    """The overrides that move a GPU recipe onto the CPU, as they must be typed."""
    overrides = ["trainer=cpu"]
    if run.trainer.strategy != "auto":  # a recipe's FSDP/DeepSpeed/DDP strategy needs GPUs
        overrides.append("trainer.strategy=auto")
    if run.trainer.precision not in ("32-true", "32", "auto"):
        overrides.append("trainer.precision=auto")
    if run.model.quantize is not None:
        overrides.append("model.quantize=null")
    return " ".join(overrides)


def check_output_root(run: RunConfig, problems: list[str]) -> None:
    """Run folders must be creatable under `output_root` (checked without creating any)."""
    base = (Path(run.output_root).expanduser() / run.name).absolute()
    existing = next(p for p in (base, *base.parents) if p.exists())
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is a file, not a folder"
    else:
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as err:
            problem = f"{existing} is not writable ({err.strerror or err})"
    if problem:
        problems.append(
            f"output_root='{run.output_root}': cannot create run folders in {base}: {problem}."
            "\nFix: output_root=<a folder you can write>"
        )


def check_tracking_uri(uri: str, problems: list[str]) -> None:
    """The MLflow store must be reachable: an SQLite file that is a database, or a live server."""
    uri = absolute_uri(uri)
    path = sqlite_file(uri)
    fix = "Fix: logger.tracking_uri=sqlite:///mlflow.db (or MLFLOW_TRACKING_URI) or a live server"
    problem = None
    if path is not None:
        problem = _sqlite_problem(uri, path, fix)
    elif uri.startswith(("http://", "https://")):
        problem = _server_problem(uri, fix)
    if problem:
        problems.append(problem)


def _sqlite_problem(uri: str, path: Path, fix: str) -> str | None:
    problem = None
    if path.is_dir():
        problem = f"{path} is a folder, not an SQLite database file"
    elif path.exists():
        with open(path, "rb") as handle:
            head = handle.read(16)
        if head and head != SQLITE_MAGIC:
            problem = f"{path} exists but is not an SQLite database"
    elif not path.parent.is_dir():
        problem = f"folder {path.parent} does not exist"
    return f"logger.tracking_uri='{uri}': {problem}.\n{fix}" if problem else None


def _server_problem(uri: str, fix: str) -> str | None:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5).close()
    except urllib.error.HTTPError:
        return None  # it answered (a proxy or an older server without /health): reachable
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        return (
            f"logger.tracking_uri='{uri}': the MLflow server cannot be reached ({reason}).\n"
            f"Start it (mlflow server ...) or {fix[5:]}"
        )
    return None
