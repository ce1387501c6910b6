"""Optuna sweeps end to end on the tiny BERT: pruning fires, failures and Ctrl-C are survived,
studies resume, MLflow holds one parent run with a child per trial, the best recipe reproduces."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import REPO, tiny_overrides
from mlflow import MlflowClient
from omegaconf import OmegaConf
from optuna.trial import TrialState

import run as cli
from sweeps.report import child_runs
from sweeps.space import load_sweep_config
from tunelab.base.errors import ConfigError
from tunelab.config import compose as config
from tunelab.config.validate import load_config
from tunelab.run.module import FineTuneModule

GOOD, GOOD_TOO, HOPELESS, NAN, STOP = 1e-2, 8e-3, 1e-7, 2e-2, 3e-2


def sweep_args(tiny_bert: Path, intent_data: Path, *extra: str) -> list[str]:
    """Full fine-tuning of the tiny BERT over `optim.lr`, scored by val/loss (it learns fast)."""
    base = tiny_overrides(tiny_bert, intent_data, "trainer.max_epochs=3", "data.batch_size=8")
    return [
        "experiment=full_minilm_banking77",
        "sweep=full_lr",
        *base,
        "data.val_size=0.25",
        "optim.warmup_ratio=0.0",
        "optim.weight_decay=0.0",
        "export.save_model=false",
        "sweep.metric=val/loss",
        "sweep.direction=minimize",
        "sweep.pruner=median",
        "sweep.pruner_startup_trials=2",
        "sweep.n_warmup_steps=2",
        "sweep.params={optim.lr: {type: float, low: 1e-7, high: 5e-2, log: true}}",
        *extra,
    ]


def enqueue(*lrs: float) -> str:
    return "sweep.enqueue=[" + ", ".join(f"{{optim.lr: {lr}}}" for lr in lrs) + "]"


@pytest.fixture()
def sabotage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trials with lr=NAN get a NaN training loss; lr=STOP gets Ctrl-C in its first step (once:
    its rerun trains)."""
    original = FineTuneModule.compute_loss
    stopped: list[float] = []

    def compute_loss(self, outputs, batch):
        lr = self.hparams["optim"]["lr"]
        if lr == STOP and not stopped:
            stopped.append(lr)
            raise KeyboardInterrupt
        loss = original(self, outputs, batch)
        return loss * float("nan") if lr == NAN else loss

    monkeypatch.setattr(FineTuneModule, "compute_loss", compute_loss)


def load(name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage="sqlite:///optuna.db")


@pytest.mark.slow  # over 10 s: the default run stays under 10 minutes
def test_sweep_prunes_survives_nan_and_records_everything(
    workdir: Path, tiny_bert: Path, intent_data: Path, sabotage: None, monkeypatch
):
    args = sweep_args(
        tiny_bert, intent_data, "sweep.n_trials=4", enqueue(GOOD, NAN, GOOD_TOO, HOPELESS)
    )
    assert cli.main(args) == 0

    study = load("full_minilm_banking77_intents_full_lr")
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.PRUNED]
    good, nan, _, hopeless = study.trials
    assert "NonFiniteLossError" in nan.user_attrs["fail_reason"]
    assert sorted(good.intermediate_values) == [1, 2, 3]  # step k = after epoch k
    assert sorted(hopeless.intermediate_values) == [1, 2]  # stopped after its 2nd of 3 epochs
    steps_per_epoch = good.user_attrs["train_steps"] // 3
    assert hopeless.user_attrs["train_steps"] == 2 * steps_per_epoch
    assert study.best_trial.params["optim.lr"] in (GOOD, GOOD_TOO)
    assert len({t.user_attrs["mlflow_run_id"] for t in study.trials}) == 4
    study_dir = workdir / "outputs/full_minilm_banking77_intents" / study.study_name
    trial_dirs = sorted(p.name for p in study_dir.glob("trial_*"))
    assert trial_dirs == ["trial_0", "trial_2", "trial_3"]  # NaN at step 1: nothing kept

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.role"] == "parent"
    assert parent.data.params["sweep.pruner"] == "median"
    assert '"log": true' in parent.data.params["sweep.params.optim.lr"]
    tags = parent.data.tags  # bookkeeping as tags: no charts beside the runs' metrics
    assert float(tags["sweep.best_value"]) == pytest.approx(study.best_value, rel=1e-5)
    assert tags["sweep.trials.pruned"] == "1" and tags["sweep.trials.fail"] == "1"
    assert not [k for k in parent.data.metrics if k.startswith(("best/", "trials/"))]
    best_child = client.get_run(tags["sweep.best_run_id"])  # the parent carries its scores
    assert best_child.info.run_id == study.best_trial.user_attrs["mlflow_run_id"]
    for key in ("val/loss", "val/acc", "test/acc"):
        assert parent.data.metrics[key] == pytest.approx(best_child.data.metrics[key]), key
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"plot_optimization_history.png", "plot_parallel_coordinate.png"} <= artifacts
    assert {"trials.csv", "best_params.json", f"{study.study_name}_best.yaml"} <= artifacts

    children = {int(r.data.tags["trial"]): r for r in child_runs(client, parent.info.run_id)}
    assert sorted(children) == [0, 1, 2, 3]
    assert [children[n].data.tags["state"] for n in range(4)] == [
        "complete",
        "failed",
        "complete",
        "pruned",
    ]
    assert [children[n].info.status for n in range(4)] == [
        "FINISHED",
        "FAILED",
        "FINISHED",
        "FINISHED",  # pruned on purpose: tagged state=pruned, not "Killed" like a crash
    ]
    assert children[0].info.run_name.startswith("#0 full lr=")
    assert "test/acc" in children[0].data.metrics and "test/acc" not in children[3].data.metrics
    assert children[3].data.params["optim.lr"] == str(HOPELESS)

    # the best trial as a recipe beside the study's trials (not in the source tree):
    # `python run.py experiment=<study>_best` once copied into experiments/
    best_file = study_dir / f"{study.study_name}_best.yaml"
    assert best_file.read_text().startswith(f"# python run.py experiment={study.study_name}_best")
    assert not (workdir / "experiments").exists()
    monkeypatch.setitem(config.GROUP_DIRS, "experiment", study_dir)
    cfg, _ = load_config([f"experiment={study.study_name}_best"])
    trial_cfg = OmegaConf.load(Path(study.best_trial.user_attrs["run_dir"]) / "config.yaml")
    reproduced = OmegaConf.to_container(cfg, resolve=True)
    expected = OmegaConf.to_container(trial_cfg) | {"name": f"{study.study_name}_best"}
    assert reproduced | {"sweep": None} == expected | {"sweep": None}


@pytest.mark.slow  # over 10 s: the default run stays under 10 minutes
def test_interrupted_sweep_resumes_with_continuing_trial_numbers(
    workdir: Path, tiny_bert: Path, intent_data: Path, sabotage: None
):
    args = sweep_args(tiny_bert, intent_data, "trainer.max_epochs=2", "sweep.study_name=resume")
    assert cli.main([*args, "sweep.n_trials=3", enqueue(GOOD, STOP)]) == 130  # Ctrl-C, trial 1
    study = load("resume")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert "interrupted" in study.trials[1].user_attrs["fail_reason"]
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    assert client.get_run(parent_id).info.status == "KILLED"

    # the interrupted trial does not count toward n_trials: it runs again with its values
    assert cli.main([*args, "sweep.n_trials=3", enqueue(GOOD_TOO)]) == 0
    study = load("resume")
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    assert study.trials[2].params["optim.lr"] == GOOD_TOO and study.trials[2].state in finished
    [rerun] = [t for t in study.trials if t.user_attrs.get("rerun_of") == 1]
    assert rerun.params["optim.lr"] == STOP and rerun.state in finished
    assert study.user_attrs["mlflow_parent_run_id"] == parent_id  # one parent run per study
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert len(child_runs(client, parent_id)) == 4


@pytest.mark.slow  # over 10 s: the default run stays under 10 minutes
def test_two_workers_started_together_share_one_study_and_one_parent_run(
    workdir: Path, tiny_bert: Path, intent_data: Path
):
    """`python run.py ... sweep=...` twice at once on fresh SQLite files: no setup race."""
    args = sweep_args(tiny_bert, intent_data, "trainer.max_epochs=1", "sweep.n_trials=4")
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "run.py"), *args]
    workers = [subprocess.Popen(command, cwd=workdir, env=env) for _ in range(2)]
    assert [w.wait(timeout=300) for w in workers] == [0, 0]

    [summary] = optuna.get_all_study_summaries("sqlite:///optuna.db")
    study = load(summary.study_name)
    assert len(study.trials) == 4  # each trial claimed its slot before it started
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    assert [p.info.run_id for p in parents] == [study.user_attrs["mlflow_parent_run_id"]]
    assert len(child_runs(client, parents[0].info.run_id)) == len(study.trials)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        (
            "sweep.params={optim.lrr: {type: float, low: 1e-5, high: 1e-3}}",
            "did you mean 'optim.lr'",
        ),
        ("sweep.params={optim.lr: {type: float, low: 0.0, high: 1e-3, log: true}}", "optim.lr"),
        ("sweep.params={optim.lr: {type: gaussian}}", "sweep.params.optim.lr"),
        ("sweep.params={optim.lr: {type: float, low: 1e-3, high: 2.0}}", "optim.lr=2.0"),
        ("sweep.params={method: {type: categorical, choices: [lora, lroa]}}", "'lroa'"),
        ("sweep.pruner=asha", "sweep.pruner"),
    ],
)
def test_bad_search_space_fails_before_any_trial(
    workdir: Path, tiny_bert: Path, intent_data: Path, override: str, named: str
):
    with pytest.raises(ConfigError, match="sweep") as err:
        load_sweep_config(sweep_args(tiny_bert, intent_data, override))
    assert named in str(err.value)
    assert cli.main(sweep_args(tiny_bert, intent_data, override)) == 2
    assert not (workdir / "optuna.db").exists() and not (workdir / "outputs").exists()


def test_quantisation_is_sampled_as_a_field_none_included():
    """qlora_quant samples `model.quantize` directly: null (plain LoRA), nf4, fp4, int8."""
    from sweeps.space import suggest, trial_config

    args = ["experiment=qlora_tiny_mistral", "sweep=qlora_quant"]
    _, _, space = load_sweep_config(args)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(16):
        trial = study.ask()
        values = suggest(trial, space, args)
        trial_cfg = trial_config(args, values)
        assert trial_cfg.model.quantize == values["model.quantize"]
        assert trial_cfg.method.r == values["method.r"] and trial_cfg.sweep is None
        seen.add(values["model.quantize"])
        study.tell(trial, 0.0)
    assert seen == {None, "nf4", "fp4", "int8"}


def test_group_choice_is_composed_by_hydra_and_samples_only_paths_that_exist():
    """A `method` choice is a Hydra selection; `method.r` is sampled only when it exists."""
    from sweeps.space import suggest, trial_config

    params = (
        "{method: {type: categorical, choices: [full, lora]}, "
        "method.r: {type: int, low: 2, high: 8}}"
    )
    args = ["experiment=full_minilm_banking77", "sweep=full_lr", f"sweep.params={params}"]
    _, _, space = load_sweep_config(args)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(10):
        trial = study.ask()
        values = suggest(trial, space, args)
        trial_cfg = trial_config(args, values)
        assert trial_cfg.method.name == values["method"]
        assert ("method.r" in values) == (values["method"] == "lora")
        if values["method"] == "lora":
            assert trial_cfg.method.r == values["method.r"]
        seen.add(values["method"])
        study.tell(trial, 0.0)
    assert seen == {"full", "lora"}


@pytest.mark.parametrize("name", config.available("sweep"))
def test_every_sweep_yaml_validates_with_its_run_command(name: str):
    lines = (config.GROUP_DIRS["sweep"] / f"{name}.yaml").read_text().splitlines()
    command = lines[0].removeprefix("# python run.py ").split()
    assert lines[0].startswith("# python run.py experiment=") and f"sweep={name}" in command
    assert lines[1].startswith("# ") and len(lines[1]) > 20  # the description `--help` shows
    _, _, space = load_sweep_config(command)
    assert space.params and space.study_name


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], 3),
        (["trainer.max_epochs=4", "trainer.val_check_interval=0.5"], 8),
        (["trainer.max_epochs=6", "trainer.check_val_every_n_epoch=2"], 3),
    ],
)
def test_hyperband_resource_is_the_number_of_validations(overrides: list[str], expected: int):
    from sweeps.optuna_sweep import max_reports

    _, run = load_config(["experiment=full_minilm_banking77", "trainer.max_epochs=3", *overrides])
    assert max_reports(run) == expected


def test_two_local_workers_each_get_half_the_cores():
    import socket

    import torch

    from sweeps.stale import share_cores

    cores = len(os.sched_getaffinity(0))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study = optuna.create_study()
    for pid in (os.getpid(), os.getppid(), dead.pid):  # two live workers, one gone
        study.ask().set_user_attr("worker", f"{socket.gethostname()}:{pid}")
    before = torch.get_num_threads()
    try:
        threads = share_cores(study.ask())
        assert threads == torch.get_num_threads()
        assert 1 <= threads <= max(1, cores // 2)  # not one thread per core each
    finally:
        torch.set_num_threads(before)


def test_a_worker_that_loses_the_race_to_tag_the_parent_writes_again(tmp_path: Path):
    """Two workers ending one sweep tag its parent at once; the loser's INSERT is made again."""
    from mlflow.exceptions import MlflowException

    from sweeps.best import finish_parent

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = client.create_run(client.create_experiment("race")).info.run_id
    study = optuna.create_study()
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    raced = []

    class Raced(MlflowClient):  # the other worker's INSERT lands between our SELECT and INSERT
        def set_tag(self, run_id, key, value, **kwargs):
            if not raced:
                raced.append(key)
                raise MlflowException(
                    "(psycopg.errors.UniqueViolation) duplicate key value violates unique "
                    f'constraint "tag_pk" DETAIL: Key (key, run_uuid)=({key}, {run_id})'
                )
            return super().set_tag(run_id, key, value, **kwargs)

    finish_parent(Raced(client.tracking_uri), None, parent, study, "FINISHED")
    assert raced == ["sweep.trials.complete"]
    assert client.get_run(parent).data.tags["sweep.trials.complete"] == "2"
    with pytest.raises(MlflowException, match=r"RESOURCE|not found|No Run"):
        finish_parent(client, None, "0" * 32, study, "FINISHED")  # other errors are not retried
