"""MLflow writes that wait on disk while the tracking server is away, delivered when it is back.

A run logs through `Outbox.client`: each write (metrics, params, tags, artifacts, the final
status) goes to the server; when the server cannot be reached (a refused connection, a 5xx
after MLflow's own retries), the write is appended to `<run dir>/mlflow_outbox.jsonl` instead
and training goes on. Later writes queue behind it, in order; every so often (backoff from
`FIRST_WAIT` to `MAX_WAIT` seconds) and when the run ends, the queue is replayed. What is still
queued when the run ends stays on disk, and

    python -m tunelab.tracking.outbox [folder ...]

delivers every outbox under the folders (default `outputs`); the next run of the same
experiment does too. MLflow's HTTP retries are bounded for this process (`bound_retries`), so
an outage costs seconds per attempt, not minutes per logged step.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from tunelab.base.ranks import is_rank_zero

log = logging.getLogger(__name__)
FILE = "mlflow_outbox.jsonl"
FIRST_WAIT, MAX_WAIT = 5.0, 60.0  # s between delivery attempts while the server is away
QUEUED = {  # MlflowClient writes kept while the server is away; other calls go straight through
    "log_batch",
    "log_metric",
    "log_param",
    "set_tag",
    "delete_tag",
    "update_run",
    "set_terminated",
    "log_artifact",
    "log_artifacts",
    "log_text",
    "log_dict",
    "log_inputs",
}
RETRIES = {  # MLflow's own HTTP retry settings, unless the user set them
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def bound_retries() -> None:
    """Bound MLflow's HTTP retries in this process (MLflow reads these at each request)."""
    for key, value in RETRIES.items():
        os.environ.setdefault(key, value)


def prepare(tracking_uri: str, experiment_dir: Path, run_dir: Path | None) -> Path | None:
    """A run's outbox file (None without a tracking server); earlier runs' are delivered first.

    Args:
        tracking_uri: the run's tracking URI.
        experiment_dir: `<output_root>/<name>`, the experiment's run folders (sweeps included).
        run_dir: the run's folder.
    """
    if not tracking_uri.startswith(("http://", "https://")) or run_dir is None:
        return None
    bound_retries()
    if is_rank_zero():
        deliver_all([experiment_dir])
    return run_dir / FILE


def unreachable(err: BaseException) -> bool:
    """Whether `err` says the tracking server is away (not that the request was wrong)."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        return err.get_http_status_code() >= 500
    return isinstance(err, requests.exceptions.RequestException)


def _encode(value: Any) -> Any:
    """A JSON form of a call argument; MLflow entities (Metric, Param, RunTag...) by name."""
    import mlflow.entities

    if getattr(mlflow.entities, type(value).__name__, None) is type(value):
        return {"__entity__": type(value).__name__, "fields": _encode(dict(value))}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    json.dumps(value)  # TypeError for anything else that JSON cannot hold
    return value


def _decode(value: Any) -> Any:
    import mlflow.entities

    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict) and "__entity__" in value:
        cls = getattr(mlflow.entities, value["__entity__"])
        return cls.from_dictionary(_decode(value["fields"]))
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    return value


def encode_call(name: str, args: tuple, kwargs: dict) -> str:
    """One outbox line: the MlflowClient method and its arguments by name."""
    from mlflow import MlflowClient

    bound = inspect.signature(getattr(MlflowClient, name)).bind(None, *args, **kwargs)
    arguments = {k: v for k, v in list(bound.arguments.items())[1:] if k != "synchronous"}
    return json.dumps({"call": name, "args": _encode(arguments)})


def replay(client: Any, line: str) -> None:
    """Send one outbox line to the server."""
    call = json.loads(line)
    getattr(client, call["call"])(**_decode(call["args"]))


class Outbox:
    """The queue of one run's MLflow writes that wait for the server (see module doc).

    The process that queues holds a file lock beside the outbox until everything is delivered;
    the OS drops it when that process dies, so `deliver_all` leaves live runs' outboxes alone.

    Args:
        client: the run's `MlflowClient`.
        path: the outbox file, `<run dir>/mlflow_outbox.jsonl`: a header line naming the
            tracking URI, then one line per queued write.
        tracking_uri: the server's URI, for `python -m tunelab.tracking.outbox`.
    """

    def __init__(self, client: Any, path: Path, tracking_uri: str):
        from filelock import FileLock

        self.client, self.path, self.uri = client, path, tracking_uri
        self.wait, self.retry_at = FIRST_WAIT, 0.0
        self.lock = FileLock(f"{path}.lock", timeout=120)  # held while writes wait (see below)

    def write(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call `client.<name>`, or queue the call when the server is away (or others wait)."""
        if self.deliver():
            try:
                return getattr(self.client, name)(*args, **kwargs)
            except Exception as err:
                if not unreachable(err):
                    raise
                self._away(err)
        try:
            line = encode_call(name, args, kwargs)
        except TypeError:  # e.g. a DataFrame table: not kept (the run's files hold it)
            log.warning("MLflow server away: %s not logged (cannot be queued)", name)
            return None
        if not self.lock.is_locked:  # the owner holds it until all is delivered (or it dies)
            self.lock.acquire()
        header = "" if self.path.is_file() else json.dumps({"tracking_uri": self.uri}) + "\n"
        with self.path.open("a") as f:
            f.write(header + line + "\n")
        return None

    def deliver(self, force: bool = False) -> bool:
        """Replay the queued writes (when due, or `force`); whether none is left."""
        if not self.path.is_file():
            return True
        if not force and time.monotonic() < self.retry_at:
            return False
        if not self.lock.is_locked:
            self.lock.acquire()
        header, *lines = self.path.read_text().splitlines()
        for i, line in enumerate(lines):
            try:
                replay(self.client, line)
            except Exception as err:
                if not unreachable(err):  # refused for good (e.g. a deleted run): dropped
                    log.warning("MLflow refused a queued write, dropped: %s", err)
                    continue
                self._away(err)
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text("".join(f"{rest}\n" for rest in [header, *lines[i:]]))
                os.replace(tmp, self.path)
                return False
        self.path.unlink()
        Path(self.lock.lock_file).unlink(missing_ok=True)
        self.release()
        self.wait = FIRST_WAIT
        log.warning("MLflow server back: %d queued writes delivered", len(lines))
        return True

    def _away(self, err: BaseException) -> None:
        if self.retry_at == 0.0 or self.wait == FIRST_WAIT:
            log.warning("MLflow server unreachable, writes queued in %s: %s", self.path, err)
        self.retry_at = time.monotonic() + self.wait
        self.wait = min(2 * self.wait, MAX_WAIT)

    def release(self) -> None:
        """Let `deliver_all` (another process) deliver what waits: the run has ended."""
        if self.lock.is_locked:
            self.lock.release(force=True)

    @property
    def pending(self) -> int:
        """Writes still queued."""
        return len(self.path.read_text().splitlines()) - 1 if self.path.is_file() else 0


class QueuedClient:
    """An `MlflowClient` whose writes go through an `Outbox`; reads fail soft when away.

    `get_run` answers None while the server is away (what Lightning's non-zero ranks see).
    """

    def __init__(self, outbox: Outbox):
        self.outbox = outbox

    def __getattr__(self, name: str) -> Any:
        if name in QUEUED:
            return lambda *args, **kwargs: self.outbox.write(name, *args, **kwargs)
        return getattr(self.outbox.client, name)

    def get_run(self, run_id: str) -> Any:
        """The run, or None while the server is away."""
        try:
            return self.outbox.client.get_run(run_id)
        except Exception as err:
            if not unreachable(err):
                raise
            return None


def deliver_all(folders: list[Path]) -> int:
    """Deliver every outbox under `folders` but live runs'; how many writes are still queued."""
    from filelock import Timeout
    from mlflow import MlflowClient

    left = 0
    for path in sorted(p for folder in folders for p in Path(folder).rglob(FILE)):
        uri = json.loads(path.read_text().splitlines()[0])["tracking_uri"]
        outbox = Outbox(MlflowClient(uri), path, uri)
        try:
            outbox.lock.acquire(timeout=0)
        except Timeout:  # a live run's own outbox: it delivers it
            left += outbox.pending
            continue
        outbox.deliver(force=True)
        left += outbox.pending
        outbox.release()
    return left


def main(argv: list[str]) -> int:
    """`python -m tunelab.tracking.outbox [folder ...]`: deliver queued MLflow writes."""
    bound_retries()
    left = deliver_all([Path(a) for a in argv] or [Path("outputs")])
    if left:
        print(
            f"error: {left} MLflow writes still wait (the server is unreachable, or their run is "
            "still going); they stay on disk: rerun this command later"
        )
        return 1
    print("MLflow outboxes delivered")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
