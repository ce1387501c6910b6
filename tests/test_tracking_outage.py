"""A real MLflow tracking server stopped in the middle of a run, for longer than MLflow's retries.

Each test starts its own server process (SQLite store, a free port) so stopping it disturbs no
other test. The outage is tied to training steps, not to the clock: the server is stopped after
step `STOP_AT` and (when it comes back) restarted only once the run has queued writes in its
outbox, i.e. once MLflow's own HTTP retries were spent and failed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import lightning as L
import pytest
from conftest import REPO, tiny_overrides
from lightning.pytorch.loggers import MLFlowLogger
from mlflow import MlflowClient

import run as cli
from tunelab.tracking import outbox

STOP_AT = 2
EXTRA = ("data.batch_size=8", "trainer.max_epochs=3", "export.save_model=false")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A private `mlflow server` on a free port, stopped and started for real."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def healthy(self) -> bool:
        try:
            return urllib.request.urlopen(f"{self.url}/health", timeout=2).status == 200
        except OSError:
            return False

    def start(self) -> None:
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--workers", "1"]
        command += ["--backend-store-uri", f"sqlite:///{self.folder}/mlflow.db"]
        command += ["--artifacts-destination", str(self.folder / "artifacts")]
        log = (self.folder / "server.log").open("a")
        self.process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 180
        while not self.healthy():
            assert self.process.poll() is None, (self.folder / "server.log").read_text()
            assert time.monotonic() < deadline, "MLflow server did not start"
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=60)
        assert not self.healthy()


@pytest.fixture()
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for key, value in outbox.RETRIES.items():  # what the run sets; restored after the test
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "server").mkdir()
    found = Server(tmp_path / "server")
    found.start()
    yield found
    found.stop()


class Outage(L.Callback):
    """Stop the server after step STOP_AT; restart it once writes wait in the outbox (`back`)."""

    def __init__(self, server: Server, back: bool):
        self.server, self.back = server, back
        self.queued = 0

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == STOP_AT and not self.queued:  # once (a sweep's first trial)
            self.server.stop()
        waiting = Path(trainer.default_root_dir) / outbox.FILE
        if self.back and not self.queued and waiting.is_file():
            self.queued = len(waiting.read_text().splitlines()) - 1
            self.server.start()


@pytest.fixture()
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every (metric, step) the run's logger sent towards MLflow."""
    logged: list[tuple[str, int]] = []
    original = MLFlowLogger.log_metrics

    def log_metrics(self, metrics, step=None):
        logged.extend((key, step or 0) for key in metrics)
        original(self, metrics, step)

    monkeypatch.setattr(MLFlowLogger, "log_metrics", log_metrics)
    return logged


def run_with_outage(monkeypatch, server: Server, args: list[str], back: bool) -> Outage:
    import tunelab.run.pipeline as pipeline

    outage, build = Outage(server, back), pipeline.build_trainer
    monkeypatch.setattr(
        pipeline, "build_trainer", lambda r, d, lg, cb, ck=None: build(r, d, lg, [outage, *cb], ck)
    )
    assert cli.main(args) == 0
    return outage


def check_delivered(server: Server, folder: Path, sent: list[tuple[str, int]]) -> None:
    """The run is FINISHED on the server with every metric at every step it logged."""
    client = MlflowClient(server.url)
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    for key in {k for k, _ in sent if k != "epoch"}:
        steps = {m.step for m in client.get_metric_history(run.info.run_id, key)}
        assert steps == {s for k, s in sent if k == key}, key
    assert not list(folder.rglob(outbox.FILE))


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_training_rides_out_a_tracking_server_outage(
    workdir: Path, tiny_bert: Path, intent_data: Path, server: Server, sent, monkeypatch
):
    args = ["experiment=full_minilm_banking77", *tiny_overrides(tiny_bert, intent_data, *EXTRA)]
    args.append(f"logger.tracking_uri={server.url}")
    outage = run_with_outage(monkeypatch, server, args, back=True)

    assert outage.queued > 0  # MLflow's retries ran out: writes waited on disk
    assert max(s for k, s in sent if k == "train/loss") > STOP_AT + 1  # trained on
    [run_dir] = {p.parent for p in (workdir / "outputs").rglob("test_metrics.json")}
    assert list(run_dir.rglob("*.ckpt"))  # checkpoints kept
    check_delivered(server, workdir / "outputs", sent)


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_writes_left_when_the_server_stays_down_are_delivered_by_one_command(
    workdir: Path, tiny_bert: Path, intent_data: Path, server: Server, sent, monkeypatch, caplog
):
    args = ["experiment=full_minilm_banking77", *tiny_overrides(tiny_bert, intent_data, *EXTRA)]
    args.append(f"logger.tracking_uri={server.url}")
    run_with_outage(monkeypatch, server, args, back=False)

    [waiting] = list((workdir / "outputs").rglob(outbox.FILE))
    assert (waiting.parent / "test_metrics.json").is_file()  # the run's outputs are on disk
    assert "python -m tunelab.tracking.outbox" in caplog.text
    command = [sys.executable, "-m", "tunelab.tracking.outbox", "outputs"]
    down = subprocess.run(command, cwd=workdir, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert down.returncode == 1 and waiting.is_file()  # still down: nothing lost

    server.start()
    up = subprocess.run(command, cwd=workdir, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert up.returncode == 0
    check_delivered(server, workdir / "outputs", sent)


def test_writes_queued_while_the_server_refuses_arrive_in_order_with_their_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Metrics, params, tags, an artifact and the final status, queued then replayed."""
    from mlflow.entities import Metric, Param, RunTag

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    store = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = store.create_run(store.create_experiment("outbox")).info.run_id
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    box = outbox.Outbox(MlflowClient(nobody), tmp_path / outbox.FILE, nobody)
    client = outbox.QueuedClient(box)
    batch = {"metrics": [Metric("train/loss", 0.5, 1, 3)], "params": [Param("lr", "0.1")]}
    client.log_batch(run_id, **batch, tags=[RunTag("method", "lora")])
    client.set_tag(run_id, "state", "complete")
    (tmp_path / "test_metrics.json").write_text("{}")
    client.log_artifact(run_id, str(tmp_path / "test_metrics.json"))
    client.set_terminated(run_id, "FINISHED")
    assert box.pending == 4 and client.get_run(run_id) is None

    box.client = store  # the server is back
    assert box.deliver(force=True) and not (tmp_path / outbox.FILE).exists()
    run = store.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.1"} and run.data.metrics == {"train/loss": 0.5}
    assert [m.step for m in store.get_metric_history(run_id, "train/loss")] == [3]
    assert run.data.tags["method"] == "lora" and run.data.tags["state"] == "complete"
    assert [f.path for f in store.list_artifacts(run_id)] == ["test_metrics.json"]


@pytest.mark.slow
def test_a_run_created_while_the_server_is_down_waits_for_it(
    server: Server, caplog: pytest.LogCaptureFixture
):
    """A trial's child run cannot wait in an outbox: its creation is tried again until it works."""
    import threading

    from mlflow.exceptions import MlflowException

    from tunelab.tracking.store import when_back

    client = MlflowClient(server.url)
    experiment = client.create_experiment("down_at_start")
    server.stop()
    threading.Timer(2, server.start).start()  # back after the first try failed
    run = when_back(lambda: client.create_run(experiment, run_name="trial"), "creating the run")
    assert client.get_run(run.info.run_id).info.run_name == "trial"
    assert "MLflow server unreachable while creating the run" in caplog.text
    server.stop()
    with pytest.raises(MlflowException):  # an outage longer than the patience is raised
        when_back(lambda: client.create_run(experiment), "creating the run", patience=1)


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_a_sweep_worker_rides_out_a_tracking_server_outage(
    workdir: Path, tiny_bert: Path, intent_data: Path, server: Server, monkeypatch
):
    import optuna
    from test_sweeps import sweep_args

    args = [
        *[a for a in sweep_args(tiny_bert, intent_data) if not a.startswith("logger.tracking")],
        f"logger.tracking_uri={server.url}",
        "sweep.n_trials=2",
        "sweep.pruner=none",
        "sweep.study_name=outage",
    ]
    outage = run_with_outage(monkeypatch, server, args, back=True)

    assert outage.queued > 0  # the first trial's writes waited for the server
    study = optuna.load_study(study_name="outage", storage="sqlite:///optuna.db")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    client = MlflowClient(server.url)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 and len(runs) == 3
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {c.data.tags["state"] for c in children} == {"complete"}
    for child in children:  # every training step's loss, the outage's included
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "train/loss"))
        assert steps == list(range(steps[0], steps[-1] + 1)) and steps[-1] > STOP_AT + 1
    assert not list((workdir / "outputs").rglob(outbox.FILE))
