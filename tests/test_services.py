"""Sweep workers on real servers: an Optuna study on PostgreSQL, runs on an MLflow server.

`. .ci/services.sh` starts both and exports TUNELAB_TEST_POSTGRES_URL and
TUNELAB_TEST_MLFLOW_URL; without them these tests skip. Each worker is `python run.py ...
sweep=...` with `sweep.storage=postgresql://...` and `MLFLOW_TRACKING_URI=http://...`, exactly
the two-machine recipe of the README, on the tiny BERT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from conftest import REPO, tiny_overrides
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import TrialState

POSTGRES = os.environ.get("TUNELAB_TEST_POSTGRES_URL", "")
MLFLOW = os.environ.get("TUNELAB_TEST_MLFLOW_URL", "")

pytestmark = [
    pytest.mark.services,
    pytest.mark.skipif(
        not (POSTGRES and MLFLOW), reason="needs `. .ci/services.sh` (PostgreSQL, MLflow server)"
    ),
]


def worker(
    tiny_bert: Path,
    intent_data: Path,
    workdir: Path,
    *extra: str,
    remote: bool = False,
    log: Path | None = None,
) -> subprocess.Popen:
    """Start one sweep worker (full fine-tuning of the tiny BERT over optim.lr).

    `remote`: it names itself as on another machine, so only the heartbeat can tell it died
    (a local worker's death is seen at once from its process id, `sweeps.stale`). `log`: a file
    for its output.
    """
    base = [
        a
        for a in tiny_overrides(tiny_bert, intent_data, "trainer.max_epochs=2")
        if not a.startswith("logger.tracking_uri")  # the server, from MLFLOW_TRACKING_URI
    ]
    args = [
        "experiment=full_minilm_banking77",
        "sweep=full_lr",
        *base,
        "data.batch_size=8",
        "export.save_model=false",
        f"sweep.storage={POSTGRES}",
        "sweep.pruner=none",
        "sweep.params={optim.lr: {type: float, low: 1e-4, high: 1e-2, log: true}}",
        *extra,
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": MLFLOW}
    if remote:
        env["TUNELAB_SWEEP_WORKER"] = "other-machine"
    command = [sys.executable, str(REPO / "run.py"), *args]
    output = log.open("a") if log else None
    return subprocess.Popen(
        command, cwd=workdir, env=env, start_new_session=True, stdout=output, stderr=output
    )


def names() -> tuple[str, str]:
    """A fresh study name and MLflow experiment (the servers outlive the tests)."""
    tag = uuid.uuid4().hex[:8]
    return f"services_{tag}", f"tunelab_services_{tag}"


def runs_of(experiment: str) -> tuple[list, list]:
    """The parent runs and the child (trial) runs of an MLflow experiment on the server."""
    from mlflow import MlflowClient

    client = MlflowClient(MLFLOW)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def check_one_study(study: optuna.Study, experiment: str) -> list:
    """Trial numbers 0..n-1, one parent run, each trial exactly one child run under it."""
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(len(numbers)))
    parents, children = runs_of(experiment)
    assert [p.info.run_id for p in parents] == [study.user_attrs["mlflow_parent_run_id"]]
    assert parents[0].info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert sorted(int(c.data.tags["trial"]) for c in children) == numbers
    return children


def test_three_workers_started_together_share_one_study(
    workdir: Path, tiny_bert: Path, intent_data: Path
):
    study_name, experiment = names()
    extra = (f"sweep.study_name={study_name}", f"logger.experiment_name={experiment}")
    workers = [
        worker(tiny_bert, intent_data, workdir, "sweep.n_trials=4", *extra) for _ in range(3)
    ]
    assert [w.wait(timeout=600) for w in workers] == [0, 0, 0]

    study = optuna.load_study(study_name=study_name, storage=POSTGRES)
    assert len(study.trials) == 4  # each trial claimed its slot before it started
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}
    children = check_one_study(study, experiment)
    assert {c.info.status for c in children} == {"FINISHED"}


def wait_for_running_trial(
    study_name: str, process: subprocess.Popen, timeout: float = 300
) -> optuna.trial.FrozenTrial:
    """The first trial that is training (its MLflow child run exists)."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        try:
            study = optuna.load_study(study_name=study_name, storage=POSTGRES)
        except KeyError:  # not created yet
            study = None
        for trial in study.trials if study else []:
            if trial.state == TrialState.RUNNING and "mlflow_run_id" in trial.user_attrs:
                return trial
        time.sleep(0.5)
    raise AssertionError("no trial started training")


def wait_for_tags(run_id: str, timeout: float = 60) -> None:
    """Until a trial's child run carries its `trial` tag (set right after training starts)."""
    from mlflow import MlflowClient

    client, deadline = MlflowClient(MLFLOW), time.time() + timeout
    while "trial" not in client.get_run(run_id).data.tags:
        assert time.time() < deadline, f"run {run_id} got no trial tag"
        time.sleep(0.2)


def test_a_killed_workers_trial_is_failed_by_heartbeat_and_rerun(
    workdir: Path, tiny_bert: Path, intent_data: Path
):
    study_name, experiment = names()
    extra = [
        f"sweep.study_name={study_name}",
        f"logger.experiment_name={experiment}",
        "sweep.n_trials=3",
        "sweep.heartbeat_interval=1",
        "sweep.grace_period=3",
    ]
    doomed = worker(tiny_bert, intent_data, workdir, *extra, remote=True)
    killed = wait_for_running_trial(study_name, doomed)
    wait_for_tags(killed.user_attrs["mlflow_run_id"])
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait(timeout=60)
    time.sleep(4)  # past the grace period: the trial's heartbeat is stale
    survivors = [worker(tiny_bert, intent_data, workdir, *extra) for _ in range(2)]
    assert [w.wait(timeout=600) for w in survivors] == [0, 0]

    study = optuna.load_study(study_name=study_name, storage=POSTGRES)
    trials = study.trials
    assert trials[killed.number].state == TrialState.FAIL
    rerun_of = RetryFailedTrialCallback.retried_trial_number
    reruns = [t for t in trials if rerun_of(t) == killed.number]
    assert len(reruns) == 1 and reruns[0].state == TrialState.COMPLETE
    assert reruns[0].params == killed.params
    assert all(t.state == TrialState.COMPLETE for t in trials if t.number != killed.number)
    # Killed after its first checkpoint, the dead attempt is continued by its rerun (folder,
    # checkpoint and MLflow child run, closed FINISHED); killed before it (or after its run
    # closed but before Optuna recorded the trial), the rerun starts over and the dead attempt's
    # child run ends KILLED. Either way nothing is left RUNNING.
    assert [t.number for t in trials] == list(range(len(trials)))
    parents, children = runs_of(experiment)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert all(c.info.status in ("FINISHED", "KILLED") for c in children)
    by_trial = {int(c.data.tags["trial"]): c for c in children}
    [rerun_run] = [by_trial[reruns[0].number]]
    assert rerun_run.info.status == "FINISHED" and rerun_run.data.tags["state"] == "complete"
    if rerun_run.info.run_name.startswith(f"#{killed.number} "):  # continued
        assert sorted(by_trial) == [t.number for t in trials if t.number != killed.number]
    else:
        assert sorted(by_trial) == [t.number for t in trials]
        assert by_trial[killed.number].info.status == "KILLED"
        assert "no heartbeat" in by_trial[killed.number].data.tags["fail_reason"]


def test_a_worker_killed_and_started_again_leaves_no_run_running(
    workdir: Path, tiny_bert: Path, intent_data: Path
):
    """The worker dies by SIGKILL mid-trial and the same command is run again at once."""
    study_name, experiment = names()
    extra = [
        f"sweep.study_name={study_name}",
        f"logger.experiment_name={experiment}",
        "sweep.n_trials=2",
    ]
    doomed = worker(tiny_bert, intent_data, workdir, *extra)
    killed = wait_for_running_trial(study_name, doomed)
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait(timeout=60)
    assert worker(tiny_bert, intent_data, workdir, *extra).wait(timeout=600) == 0

    study = optuna.load_study(study_name=study_name, storage=POSTGRES)
    trials = study.trials
    assert trials[killed.number].state == TrialState.FAIL
    assert trials[killed.number].user_attrs["interrupted"]  # not counted: rerun instead
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 2 and killed.params in [t.params for t in finished]
    _, children = runs_of(experiment)
    assert not [c for c in children if c.info.status == "RUNNING"]
    dead = [c for c in children if c.info.run_id == killed.user_attrs["mlflow_run_id"]]
    assert dead and dead[0].info.status in ("KILLED", "FINISHED")  # FINISHED: continued


def restart_postgres(down_s: float = 5) -> None:
    """Stop the cluster `.ci/services.sh` started, leave it down `down_s` s, start it again.

    While it is down the workers' heartbeats (every second here) and polls hit a refused
    connection, so their retries are exercised whatever they were doing.
    """
    clusters = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True)
    version, cluster = clusters.stdout.split()[:2]
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run([*sudo, "pg_ctlcluster", version, cluster, "stop"], check=True)
    time.sleep(down_s)
    subprocess.run([*sudo, "pg_ctlcluster", version, cluster, "start"], check=True)


def postgres_up(timeout: float = 120) -> bool:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    engine = create_engine(POSTGRES)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                with engine.connect() as connection:
                    return connection.execute(text("SELECT 1")).scalar() == 1
            except OperationalError:
                time.sleep(1)
        return False
    finally:
        engine.dispose()


def test_a_sweep_rides_out_a_postgres_restart(workdir: Path, tiny_bert: Path, intent_data: Path):
    study_name, experiment = names()
    extra = [
        f"sweep.study_name={study_name}",
        f"logger.experiment_name={experiment}",
        "sweep.n_trials=3",
        "sweep.heartbeat_interval=1",
    ]
    log = workdir / "workers.log"
    workers = [worker(tiny_bert, intent_data, workdir, *extra, log=log) for _ in range(2)]
    try:
        wait_for_running_trial(study_name, workers[0])
        restart_postgres()  # every open connection of both workers is cut
    finally:
        assert postgres_up()  # later tests find it up
    assert [w.wait(timeout=900) for w in workers] == [0, 0], log.read_text()[-3000:]
    assert "database unreachable" in log.read_text()  # the workers did hit the outage

    study = optuna.load_study(study_name=study_name, storage=POSTGRES)
    assert len(study.trials) == 3  # none counted twice, none lost
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}
    children = check_one_study(study, experiment)
    assert {c.info.status for c in children} == {"FINISHED"}
