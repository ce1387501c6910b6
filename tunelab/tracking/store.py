"""MLflow helpers: the logger of a run, its params and tags, and the run summary."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tunelab.base.ranks import is_rank_zero
from tunelab.base.services import absolute_uri
from tunelab.config.compose import REPO_ROOT
from tunelab.tracking.run_info import flatten as flatten  # re-exported: sweeps, resume use it
from tunelab.tracking.run_info import model_name, run_name, split_recipe

log = logging.getLogger(__name__)
T = TypeVar("T")


def git_commit() -> str:
    """The repository's HEAD commit (with `-dirty` when it has uncommitted changes)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_tags(resolved: dict[str, Any]) -> dict[str, str]:
    """Tags every run carries: method, model, dataset, experiment and git commit."""
    commit = git_commit()
    return {
        "method": resolved["method"]["name"],
        "model": model_name(str(resolved["model"]["name_or_path"])),
        "dataset": resolved["data"]["name"],
        "experiment": split_recipe(str(resolved["name"]))[0],  # the recipe, whatever the data
        "git_commit": commit,
        "mlflow.source.git.commit": commit.removesuffix("-dirty"),
    }


def sqlite_file(url: str) -> Path | None:
    """The database file of an SQLAlchemy `sqlite:///...` URL (None for other URLs)."""
    if not url.startswith("sqlite:///") or url.endswith(":memory:"):
        return None
    return Path(url.removeprefix("sqlite:///")).resolve()


@contextmanager
def sqlite_lock(url: str) -> Iterator[None]:
    """Hold a file lock beside an SQLite database while it is set up.

    Creating an MLflow store (schema migrations), an experiment, an Optuna study or a sweep's
    parent run is check-then-create; two processes started together would race. On SQLite the
    lock serialises them on this machine; server URLs (postgresql://, http://) need no lock here.
    """
    path = sqlite_file(url)
    if path is None:
        yield
        return
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock", timeout=600):
        yield


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """The id of MLflow experiment `name`, created (with the store) when missing."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    with sqlite_lock(tracking_uri):
        client = MlflowClient(tracking_uri)
        found = client.get_experiment_by_name(name)
        if found:
            return found.experiment_id
        try:  # "finetuning" makes MLflow 3's UI open the model-training view, not the GenAI one
            return client.create_experiment(name, tags={"mlflow.experimentKind": "finetuning"})
        except MlflowException:  # created meanwhile by another worker on the same server
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id


def make_logger(
    resolved: dict[str, Any],
    parent_run_id: str | None = None,
    run_id: str | None = None,
    run_dir: Path | None = None,
) -> Any:
    """An `MLFlowLogger` for one run; a nested child of `parent_run_id` when given.

    `run_id` continues an existing run (a resumed one), marked running again. With a tracking
    server, writes wait in `run_dir`'s outbox while it is away (`tunelab.tracking.outbox`).
    """
    from mlflow import MlflowClient

    from tunelab.tracking import outbox
    from tunelab.tracking.logger import TunelabMLFlowLogger

    cfg = resolved["logger"]
    name = run_name(resolved)
    uri = absolute_uri(cfg["tracking_uri"])
    tags = run_tags(resolved)
    if is_rank_zero():  # under DDP the other processes log nothing
        ensure_experiment(uri, cfg["experiment_name"])
    waiting = outbox.prepare(uri, Path(resolved["output_root"]) / resolved["name"], run_dir)
    if run_id is not None and is_rank_zero():
        set_run_status(uri, run_id, "RUNNING")
    elif parent_run_id is not None:
        client, nested = MlflowClient(uri), tags | {"mlflow.parentRunId": parent_run_id}

        def create() -> Any:
            parent = client.get_run(parent_run_id)
            return client.create_run(parent.info.experiment_id, run_name=name, tags=nested)

        run_id = when_back(create, "creating the run").info.run_id
    with sqlite_lock(uri):  # its MlflowClient opens the store: on torchrun's other ranks too,
        return TunelabMLFlowLogger(  # which must not migrate a new SQLite file beside rank 0
            experiment_name=cfg["experiment_name"],
            tracking_uri=uri,
            run_name=name,
            tags=tags,
            run_id=run_id,
            log_model=False,
            outbox=waiting,
        )


def when_back(call: Callable[[], T], what: str, patience: float = 300.0) -> T:
    """`call()`, made again while the tracking server is away, for up to `patience` seconds.

    A write can wait in the outbox; creating a run cannot (its id is needed now). A server that
    answers 5xx (its database restarting) or not at all is waited for, 5 s doubling to 60 s
    between tries; other errors, and an outage longer than `patience`, are raised.
    """
    from tunelab.base.backoff import Backoff, again_while
    from tunelab.tracking.outbox import FIRST_WAIT, MAX_WAIT, unreachable

    def warn(err: Exception, wait: float) -> None:
        log.warning("MLflow server unreachable while %s; trying again in %.0f s", what, wait)

    return again_while(call, unreachable, Backoff(FIRST_WAIT, MAX_WAIT, patience), warn)


def ui_command(tracking_uri: str) -> str:
    """The `mlflow ui` command that shows runs stored at `tracking_uri`."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def set_run_status(tracking_uri: str, run_id: str, status: str) -> None:
    """Set an MLflow run's status (RUNNING to continue it, KILLED for a dead one)."""
    from mlflow import MlflowClient

    client = MlflowClient(absolute_uri(tracking_uri))
    if status == "RUNNING":
        client.update_run(run_id, status="RUNNING")
    else:
        client.set_terminated(run_id, status)
