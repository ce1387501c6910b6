"""Interrupted runs resume to the result of a run never interrupted; signals exit as signals do.

In-process tests stop a run the way SIGTERM does (the stop request the signal handler sets) at a
chosen step; the slow tests kill a real `run.py` process with SIGKILL and SIGTERM.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, StopAt, runs, tiny_overrides
from mlflow import MlflowClient
from test_decoder_train import bert64  # noqa: F401 - the fixture
from test_methods import teacher  # noqa: F401 - the fixture

import run as cli
from datamodules.resumable import EpochOrder, shuffled
from tunelab.config.compose import available
from tunelab.run import resume

RECIPE = "experiment=full_minilm_banking77"
EXTRA = (
    "data.batch_size=8",
    "trainer.max_epochs=3",
    "trainer.checkpoint_every_n_steps=3",
    "optim.lr=1e-2",
    "export.save_model=false",
)


def args_for(tiny_bert: Path, intent_data: Path, *more: str) -> list[str]:
    return [RECIPE, *tiny_overrides(tiny_bert, intent_data, *EXTRA), *more]


def history(folder: Path, run_id: str, key: str) -> dict[int, list[float]]:
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    steps: dict[int, list[float]] = {}
    for metric in client.get_metric_history(run_id, key):
        steps.setdefault(metric.step, []).append(metric.value)
    return steps


def assert_same_run(expected: tuple[Path, str], got: tuple[Path, str]) -> None:
    """Every step's train/loss, every validation and the test metrics match."""
    for key in ("train/loss", "val/loss"):
        want, have = history(*expected, key), history(*got, key)
        assert sorted(want) == sorted(have), key
        for step, values in have.items():
            assert values == pytest.approx([want[step][0]] * len(values), abs=1e-6), (key, step)
    want = json.loads(next((expected[0] / "outputs").rglob("test_metrics.json")).read_text())
    have = json.loads(next((got[0] / "outputs").rglob("test_metrics.json")).read_text())
    assert have == pytest.approx(want, abs=1e-6)


def stop_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    import tunelab.run.pipeline as pipeline

    build = pipeline.build_trainer

    def with_stop(run, run_dir, logger, callbacks, resume_from=None):
        return build(run, run_dir, logger, [StopAt(step), *callbacks], resume_from)

    monkeypatch.setattr(pipeline, "build_trainer", with_stop)


def test_epoch_order_depends_on_seed_and_epoch_and_skips_trained_batches():
    order = EpochOrder(shuffled(50), rows=50, batch_size=8, seed=3)
    order.set_epoch(2)
    full = list(order)
    assert sorted(full) == list(range(50)) and list(order) == full  # reproducible
    order.set_epoch(3)
    assert list(order) != full  # a new order every epoch
    order.resume_at(2, 4)
    assert list(order) == full[32:]  # batches 0-3 trained: none twice, none skipped
    order.resume_at(1, 4)
    order.set_epoch(2)
    assert list(order) == full  # a position in another epoch skips nothing


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize(  # mid-epoch; the epoch's last batch (stopped after its validation)
    "step", [13, pytest.param(11, marks=pytest.mark.slow)]
)
def test_stopped_run_resumes_to_the_uninterrupted_result(
    tmp_path, monkeypatch, tiny_bert, intent_data, capsys, step
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "once").mkdir()
    (tmp_path / "twice").mkdir()
    monkeypatch.chdir(tmp_path / "once")
    assert cli.main(args_for(tiny_bert, intent_data)) == 0
    [clean] = runs(tmp_path / "once")

    monkeypatch.chdir(tmp_path / "twice")
    with monkeypatch.context() as patch:
        stop_at(patch, step)
        assert cli.main(args_for(tiny_bert, intent_data)) == 143
    err = capsys.readouterr().err
    assert "stopped by SIGTERM; checkpoint saved in outputs/full_minilm_banking77_intents/" in err
    assert f"resume with: python run.py {RECIPE}" in err and "Traceback" not in err
    [killed] = runs(tmp_path / "twice")
    assert killed.info.status == "KILLED"

    assert cli.main(args_for(tiny_bert, intent_data)) == 0
    [resumed] = runs(tmp_path / "twice")
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    [folder] = (tmp_path / "twice" / "outputs" / "full_minilm_banking77_intents").iterdir()
    assert resume.read_state(folder)["status"] == "finished"
    assert not (folder / resume.CHECKPOINT).exists()  # finished: only the best checkpoint stays
    assert_same_run(
        (tmp_path / "once", clean.info.run_id), (tmp_path / "twice", resumed.info.run_id)
    )


@pytest.mark.usefixtures("one_torch_thread")
def test_resume_false_starts_fresh_and_a_changed_config_is_refused(
    workdir, monkeypatch, tiny_bert, intent_data, capsys
):
    with monkeypatch.context() as patch:
        stop_at(patch, 2)
        assert cli.main(args_for(tiny_bert, intent_data, "trainer.max_epochs=1")) == 143
    [folder] = (workdir / "outputs" / "full_minilm_banking77_intents").iterdir()
    capsys.readouterr()
    changed = args_for(tiny_bert, intent_data, "trainer.max_epochs=1", "optim.lr=2e-3")
    assert cli.main([*changed, f"resume={folder}"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr: was 0.01, now 0.002" in err and "resume=false" in err
    assert cli.main([*changed, "resume=nowhere"]) == 2
    assert "resume=nowhere: no run folder" in capsys.readouterr().err
    assert cli.main(args_for(tiny_bert, intent_data, "trainer.max_epochs=1", "resume=false")) == 0
    assert len(list(folder.parent.iterdir())) == 2  # a new folder; the stopped one is kept
    assert resume.read_state(folder)["status"] == "killed"


def test_a_dead_run_that_is_not_resumed_is_marked_killed(workdir, monkeypatch):
    from tunelab.config.validate import load_config

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    cfg, run = load_config(["experiment=quickstart", "logger.tracking_uri=sqlite:///mlflow.db"])
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    experiment = client.create_experiment("tunelab")
    run_id = client.create_run(experiment).info.run_id  # RUNNING, as SIGKILL leaves it
    folder = workdir / "outputs" / "quickstart" / "old"
    folder.mkdir(parents=True)
    state = {"status": "running", "pid": dead.pid, "host": os.uname().nodename, "run_id": run_id}
    (folder / resume.STATE_FILE).write_text(json.dumps(state | {"config": {"seed": 1}}))
    from omegaconf import OmegaConf

    assert resume.select(run, OmegaConf.to_container(cfg, resolve=True)) is None  # differs
    assert client.get_run(run_id).info.status == "KILLED"
    assert resume.read_state(folder)["status"] == "killed"


# ----------------------------------------------------------------------------- real signals
def start(folder: Path, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [sys.executable, str(REPO / "run.py"), *args],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_checkpoint(folder: Path, proc: subprocess.Popen) -> None:
    deadline = time.time() + 300
    while not list(folder.glob("outputs/*/*/checkpoints/resume.ckpt")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_rerun_equals_the_uninterrupted_run(
    tmp_path, tiny_bert, intent_data
):
    args = args_for(  # 12 epochs: a kill 0-1 s after the first checkpoint lands mid-training
        tiny_bert, intent_data, "trainer.max_epochs=12", "trainer.checkpoint_every_n_steps=2"
    )
    (tmp_path / "once").mkdir()
    (tmp_path / "twice").mkdir()
    clean = start(tmp_path / "once", args)
    victim = start(tmp_path / "twice", args)
    wait_for_checkpoint(tmp_path / "twice", victim)
    time.sleep(random.uniform(0, 1))
    assert victim.poll() is None, "the run finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert clean.wait() == 0, clean.communicate()[1]
    [dead] = runs(tmp_path / "twice")
    assert dead.info.status == "RUNNING"  # what SIGKILL leaves behind

    rerun = start(tmp_path / "twice", args)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    [resumed] = runs(tmp_path / "twice")
    assert resumed.info.run_id == dead.info.run_id and resumed.info.status == "FINISHED"
    [clean_run] = runs(tmp_path / "once")
    assert_same_run(
        (tmp_path / "once", clean_run.info.run_id), (tmp_path / "twice", dead.info.run_id)
    )


@pytest.mark.slow
def test_sigterm_saves_exits_143_marks_killed_and_says_how_to_resume(
    tmp_path, tiny_bert, intent_data
):
    args = args_for(tiny_bert, intent_data, "trainer.max_epochs=20")
    proc = start(tmp_path, args)
    wait_for_checkpoint(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    lines = [line for line in err.splitlines() if line.startswith("stopped by SIGTERM")]
    assert len(lines) == 1 and "resume with: python run.py experiment=" in lines[0]
    assert "Traceback" not in err
    [run] = runs(tmp_path)
    assert run.info.status == "KILLED"
    [folder] = (tmp_path / "outputs" / "full_minilm_banking77_intents").iterdir()
    assert resume.read_state(folder)["status"] == "killed"
    assert (folder / resume.CHECKPOINT).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("restart", ["after_grace_period", "at_once"])
def test_sweep_worker_killed_then_rerun_equals_the_uninterrupted_sweep(
    tmp_path, tiny_bert, intent_data, restart
):
    """Rerun after the heartbeat's grace period, or at once (the dead local worker is seen)."""
    import optuna
    from test_sweeps import enqueue, sweep_args

    args = sweep_args(
        tiny_bert,
        intent_data,
        "sweep.n_trials=2",
        enqueue(1e-2, 8e-3),
        "sweep.pruner=none",
        "sweep.heartbeat_interval=1",
        f"sweep.grace_period={2 if restart == 'after_grace_period' else 600}",
        "trainer.checkpoint_every_n_steps=2",
    )
    (tmp_path / "once").mkdir()
    (tmp_path / "twice").mkdir()
    clean = start(tmp_path / "once", args)
    victim = start(tmp_path / "twice", args)
    deadline = time.time() + 600
    while not list((tmp_path / "twice").glob("outputs/*/*/trial_1/checkpoints/resume.ckpt")):
        assert victim.poll() is None and time.time() < deadline, victim.communicate()
        time.sleep(0.1)
    time.sleep(random.uniform(0, 2))
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert clean.wait() == 0, clean.communicate()[1]
    if restart == "after_grace_period":
        time.sleep(3)  # past the grace period: the next worker fails the dead trial and reruns it

    rerun = start(tmp_path / "twice", args)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err

    def results(folder: Path) -> dict[float, tuple[float, dict]]:
        [summary] = optuna.get_all_study_summaries(f"sqlite:///{folder}/optuna.db")
        study = optuna.load_study(
            study_name=summary.study_name, storage=f"sqlite:///{folder}/optuna.db"
        )
        assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
        done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        return {t.params["optim.lr"]: (t.value, t.user_attrs["test_metrics"]) for t in done}

    once, twice = results(tmp_path / "once"), results(tmp_path / "twice")
    assert sorted(once) == sorted(twice) == [8e-3, 1e-2]
    for lr, (value, metrics) in once.items():
        assert twice[lr][0] == pytest.approx(value, abs=1e-6)
        assert twice[lr][1] == pytest.approx(metrics, abs=1e-6)
    assert not [r for r in runs(tmp_path / "twice") if r.info.status == "RUNNING"]
    # the rerun continued the killed trial's folder and checkpoint rather than starting over
    trial_dirs = sorted(p.name for p in (tmp_path / "twice").glob("outputs/*/*/trial_*"))
    assert trial_dirs == ["trial_0", "trial_1"]


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from decoder_helpers import build_tiny, write_qa

    root = tmp_path_factory.mktemp("resume_decoder")
    return build_tiny(root / "mistral"), write_qa(root / "data")


def method_args(case: str, encoder: Path, intent_data: Path, decoder) -> list[str]:
    extra = ("data.batch_size=8", "trainer.max_epochs=3", "optim.lr=5e-3")
    if case == "lora_encoder":
        return ["experiment=quickstart", *tiny_overrides(encoder, intent_data, *extra)]
    if case == "distill":  # `encoder` is the teacher's export here; the student is the tiny BERT
        extra = ("data.batch_size=8", "trainer.max_epochs=3", "optim.lr=1e-3")
        extra += (f"method.teacher={encoder}", "method.student_layers=1")
        return [
            "experiment=distill_minilm_banking77",
            *tiny_overrides(decoder[2], intent_data, *extra),
        ]
    if case == "qlora_encoder":  # bitsandbytes' CPU 4-bit kernels: the hidden-64 BERT
        extra += ("model.quantize=nf4", "model.dtype=float32")
        return ["experiment=quickstart", *tiny_overrides(encoder, intent_data, *extra)]
    from decoder_helpers import decoder_overrides

    model, root = decoder[:2]
    extra = ("data.packing=true", "data.batch_size=2", "trainer.max_epochs=4")
    extra += ("trainer.check_val_every_n_epoch=1", "export.merge=false")
    return ["experiment=lora_tiny_mistral", *decoder_overrides(model, root, *extra)]


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize(
    "case", ["lora_encoder", "qlora_encoder", "distill", "lora_decoder_packed"]
)
def test_peft_and_packed_decoder_runs_resume_to_the_same_result(
    tmp_path, monkeypatch, request, tiny_bert, intent_data, tiny_decoder, case
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    encoder = {"qlora_encoder": "bert64", "distill": "teacher"}.get(case)
    encoder = request.getfixturevalue(encoder) if encoder else tiny_bert
    models = (*tiny_decoder, tiny_bert)
    args = [*method_args(case, encoder, intent_data, models), "export.save_model=false"]
    (tmp_path / "once").mkdir()
    (tmp_path / "twice").mkdir()
    monkeypatch.chdir(tmp_path / "once")
    assert cli.main(args) == 0
    [clean] = runs(tmp_path / "once")
    monkeypatch.chdir(tmp_path / "twice")
    with monkeypatch.context() as patch:
        stop_at(patch, 5)
        assert cli.main(args) == 143
    ckpt = next((tmp_path / "twice").rglob("resume.ckpt"))
    import torch

    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    if case != "distill":  # PEFT: only adapter and head tensors (distillation trains all)
        assert saved and all("lora_" in k or "classifier" in k or "score" in k for k in saved)
    assert cli.main(args) == 0
    [resumed] = runs(tmp_path / "twice")
    assert not ckpt.exists()  # a finished run keeps its best checkpoint only
    assert_same_run(
        (tmp_path / "once", clean.info.run_id), (tmp_path / "twice", resumed.info.run_id)
    )


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("method", available("method"))
def test_every_method_resumes_mid_epoch_to_the_uninterrupted_result(
    tmp_path,
    monkeypatch,
    tiny_bert,
    intent_data,
    teacher,  # noqa: F811 - the fixture imported above
    method,
):
    """Stopped mid-epoch and resumed, each method ends as if never interrupted."""
    from test_methods import EXTRA as METHOD_EXTRA

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    extra = [f"method={method}", *METHOD_EXTRA.get(method, [])]
    extra += [f"method.teacher={teacher}"] if method == "distill" else []
    for name in ("once", "twice"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "once")
    assert cli.main(args_for(tiny_bert, intent_data, *extra)) == 0
    [clean] = runs(tmp_path / "once")
    monkeypatch.chdir(tmp_path / "twice")
    with monkeypatch.context() as patch:
        stop_at(patch, 13)
        assert cli.main(args_for(tiny_bert, intent_data, *extra)) == 143
    assert cli.main(args_for(tiny_bert, intent_data, *extra)) == 0
    [resumed] = runs(tmp_path / "twice")
    assert_same_run(
        (tmp_path / "once", clean.info.run_id), (tmp_path / "twice", resumed.info.run_id)
    )
