"""A study in MLflow: a parent run, tagged child runs, Optuna's plots, the best trial as recipe."""

from __future__ import annotations

import json
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from mlflow import MlflowClient
from mlflow.entities import Param
from omegaconf import DictConfig, OmegaConf

from sweeps.best import trial_counts
from sweeps.space import SweepConfig, trial_config
from tunelab.base.schema import RunConfig
from tunelab.config.compose import available
from tunelab.tracking.parent import ParentRun
from tunelab.tracking.run_info import run_link
from tunelab.tracking.store import absolute_uri, flatten

PLOTS = ("plot_optimization_history", "plot_param_importances", "plot_parallel_coordinate")


def mlflow_client(run: RunConfig) -> MlflowClient:
    """A client of the run's tracking store."""
    return MlflowClient(absolute_uri(run.logger.tracking_uri))


def redact(url: str) -> str:
    """A storage URL without its password."""
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def _space_params(space: SweepConfig, study_name: str) -> dict[str, str]:
    """The parent run's params: sampler, pruner, objective and the search space."""
    flat = flatten(space.model_dump(exclude={"params", "enqueue"}))
    flat |= {f"params.{k}": json.dumps(v.model_dump()) for k, v in space.params.items()}
    flat |= {"storage": redact(space.storage), "study_name": study_name}
    return {f"sweep.{k}": str(v)[:6000] for k, v in flat.items()}


@dataclass
class SweepRun:
    """A study being run, with what its MLflow parent run is made from and closed with.

    Attributes:
        study: the Optuna study.
        space: its validated search space.
        args: the command line (each trial is composed from it).
        run: the command line's validated config.
        parent_id: the study's MLflow parent run.
    """

    study: optuna.Study
    space: SweepConfig
    args: list[str]
    run: RunConfig
    parent_id: str = ""


@dataclass
class TrialOutcome:
    """How a trial ended, for its MLflow child run: its tags and final status (None: running)."""

    tags: dict[str, str]
    status: str | None


def open_parent(sweep: SweepRun, cfg: DictConfig) -> str:
    """The study's parent run: reopened when the study resumes, else created with its params."""
    study = sweep.study
    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    reopened = ParentRun.reopen(sweep.run, parent_id) if parent_id else None
    if reopened is not None:  # resumed (or another worker's) study
        return reopened.run_id
    tags = {"sweep": study.study_name, "sweep.role": "parent"}
    params = _space_params(sweep.space, study.study_name)
    parent = ParentRun.open(sweep.run, f"sweep_{study.study_name}", tags, params)
    parent.client.log_text(parent.run_id, OmegaConf.to_yaml(cfg), "base_config.yaml")
    study.set_user_attr("mlflow_parent_run_id", parent.run_id)
    return parent.run_id


def tag_child(
    client: Any, parent_id: str, child_id: str | None, trial: optuna.Trial, outcome: TrialOutcome
) -> None:
    """Tag a trial's child run (created here when the trial failed before training began).

    `client` is the trial logger's (its writes wait while the server is away) when it trained.
    """
    if child_id is None:
        experiment_id = client.get_run(parent_id).info.experiment_id
        child_id = client.create_run(
            experiment_id, run_name=f"trial_{trial.number}", tags={"mlflow.parentRunId": parent_id}
        ).info.run_id
        params = [Param(k, str(v)) for k, v in trial.params.items()]
        client.log_batch(child_id, params=params)
        trial.set_user_attr("mlflow_run_id", child_id)
    for key, value in outcome.tags.items():
        client.set_tag(child_id, key, value)
    if outcome.status is not None:
        client.set_terminated(child_id, outcome.status)


def save_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Optuna's matplotlib plots as PNGs; a plot that needs more trials is skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    saved = []
    for name in PLOTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = getattr(plots, name)(study)
        except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. importances need 2 trials
            continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        figure.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
        plt.close(figure)
        saved.append(folder / f"{name}.png")
    return saved


def best_recipe_path(study: optuna.Study, space: SweepConfig, run: RunConfig) -> Path:
    """Where a study's best recipe goes: `<study>_best.yaml`, one file per study.

    Beside the study's trials (`<output_root>/<name>/<study>/`), or in
    `sweep.best_experiment_dir` when set; never in the source tree unless asked.
    """
    folder = space.best_experiment_dir or Path(run.output_root) / run.name / study.study_name
    return Path(folder) / f"{study.study_name}_best.yaml"


def write_best_experiment(
    study: optuna.Study, space: SweepConfig, args: list[str], run: RunConfig
) -> Path:
    """The best trial as a ready recipe (see `best_recipe_path`)."""
    best = study.best_trial
    trial_cfg = trial_config(args, best.params)
    del trial_cfg["sweep"]
    path = best_recipe_path(study, space, run)
    name = path.stem
    trial_cfg.name = name
    defaults = [
        {f"override /{group}": str(trial_cfg[group].name)}
        for group in ("method", "data")
        if str(trial_cfg[group].name) in available(group)
    ]
    body = OmegaConf.create({"defaults": defaults} | OmegaConf.to_container(trial_cfg))
    shown = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items()
    )
    header = (
        f"# python run.py experiment={name}\n"
        f"# Best of sweep '{study.study_name}' (trial {best.number}): "
        f"{space.metric}={best.value:.4f} with {shown}\n"
        f"# (copy this file into experiments/ to run it; sweep.best_experiment_dir=experiments "
        "writes it there)\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + OmegaConf.to_yaml(body))
    return path


def _log_best(client: MlflowClient, parent_id: str, study: optuna.Study, folder: Path) -> None:
    """The best params as an artifact (values and scores: `sweeps.best.finish_parent`)."""
    (folder / "best_params.json").write_text(json.dumps(study.best_trial.params, indent=2))


def close_parent(sweep: SweepRun, status: str) -> Path | None:
    """Log counts, best value/params, plots, trials table and best recipe; end the parent run."""
    from sweeps.best import finish_parent

    study, space, args, run, parent_id = (
        sweep.study,
        sweep.space,
        sweep.args,
        sweep.run,
        sweep.parent_id,
    )
    client = mlflow_client(run)
    # tags, the best trial's scores and link, the registered champion
    finish_parent(client, run, parent_id, study, status)
    best_file = None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            _log_best(client, parent_id, study, folder)
            best_file = write_best_experiment(study, space, args, run)
            client.log_artifact(parent_id, str(best_file))
        save_plots(study, folder)
        study.trials_dataframe().to_csv(folder / "trials.csv", index=False)
        client.log_artifacts(parent_id, tmp)
    client.set_terminated(parent_id, status)
    return best_file


def print_summary(study: optuna.Study, space: SweepConfig, run: RunConfig, parent_id: str) -> None:
    """A short table: trials by state, best value and params, where everything went."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"tunelab sweep · {study.study_name}", show_header=False)
    table.add_row("trials", json.dumps(trial_counts(study)))
    if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        best = study.best_trial
        table.add_row(f"best {space.metric}", f"{best.value:.4f} (trial {best.number})")
        table.add_row("best params", json.dumps(best.params))
        table.add_row("best recipe", str(best_recipe_path(study, space, run)))
    table.add_row("storage", redact(space.storage))
    experiment_id = mlflow_client(run).get_run(parent_id).info.experiment_id
    table.add_row("MLflow parent run", f"{parent_id}  ->  {run_link(experiment_id, parent_id)}")
    Console().print(table)


def child_runs(client: MlflowClient, parent_id: str) -> list[Any]:
    """The trial runs nested under a sweep's parent run."""
    experiment_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
