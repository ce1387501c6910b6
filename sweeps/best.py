"""A finished study's parent run as a row of the runs table: its best trial's scores and model.

The parent carries the best trial's `val/*` and `test/*` under the same keys as single runs (so
sorting the table by `test/acc` ranks sweeps among runs), a link to the best child, and the
study's bookkeeping (best value, trial counts) as tags, not metrics, so it adds no charts. The
best trial's MLflow Model is registered and the alias `champion` points at it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import optuna
from mlflow import MlflowClient

from tunelab.base.backoff import Backoff, again_while
from tunelab.base.schema import RunConfig
from tunelab.tracking.store import absolute_uri

log = logging.getLogger(__name__)

ALIAS = "champion"
CARRIED = ("val/", "test/", "params/")


def best_run_id(study: optuna.Study) -> str | None:
    """The MLflow run id of the study's best trial (None before a trial completes)."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return study.best_trial.user_attrs.get("mlflow_run_id") if done else None


def bookkeeping_tags(study: optuna.Study, counts: dict[str, int]) -> dict[str, str]:
    """Trial counts and, once a trial completed, the best value and params, as tags."""
    tags = {f"sweep.trials.{state}": str(n) for state, n in counts.items()}
    if best_run_id(study) is not None:
        best = study.best_trial
        tags |= {
            "sweep.best_value": f"{best.value:.6g}",
            "sweep.best_trial": str(best.number),
            "best.trial": str(best.number),
            "best.params": json.dumps(best.params),
        }
    return tags


def carry_best(client: MlflowClient, parent_id: str, study: optuna.Study) -> str | None:
    """Copy the best child's final `val/*`, `test/*` metrics to the parent (step 0), link it."""
    from mlflow.entities import Metric

    child_id = best_run_id(study)
    if child_id is None:
        return None
    child = client.get_run(child_id)
    metrics = [
        Metric(key, value, 0, 0)
        for key, value in child.data.metrics.items()
        if key.startswith(CARRIED)
    ]
    client.log_batch(parent_id, metrics=metrics)
    experiment_id = child.info.experiment_id
    link = f"#/experiments/{experiment_id}/runs/{child_id}"
    client.set_tag(parent_id, "sweep.best_run_id", child_id)
    scores = [f"{m.key} {m.value:.3f}" for m in sorted(metrics, key=lambda m: m.key)]
    note = (
        f"Sweep '{study.study_name}': {len(study.trials)} trials; best is trial "
        f"{study.best_trial.number} [{child.info.run_name}]({link}) with "
        f"{', '.join(s for s in scores if s.startswith('test/')) or 'no test metrics'}"
    )
    client.set_tag(parent_id, "mlflow.note.content", note)
    return child_id


def register_best(client: MlflowClient, run: RunConfig, child_id: str) -> str | None:
    """Register the best trial's model (`logger.register_as`, else the experiment name)."""
    from mlflow.exceptions import MlflowException

    from tunelab.serving.mlflow_model import register

    if not client.get_run(child_id).outputs.model_outputs:
        return None  # export.save_model=false or logger.log_model=false: no model to register
    name = run.logger.register_as or run.name
    try:
        current = client.get_model_version_by_alias(name, ALIAS).run_id
    except MlflowException:  # no such model or alias yet
        current = None
    if current != child_id:  # a resumed study with the same champion adds no version
        register(absolute_uri(run.logger.tracking_uri), child_id, name, ALIAS)
    return f"models:/{name}@{ALIAS}"


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state, e.g. `{"complete": 3, "pruned": 1}`."""
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        state = trial.state.name.lower()
        counts[state] = counts.get(state, 0) + 1
    return counts


def lost_race(err: Exception) -> bool:
    """Whether an MLflow write failed because another writer inserted the same row first."""
    text = str(err)
    return any(s in text for s in ("duplicate key", "UniqueViolation", "UNIQUE constraint"))


def finish_parent(
    client: MlflowClient, run: RunConfig, parent_id: str, study: Any, status: str
) -> None:
    """Tags, best trial's metrics and link; a FINISHED study also registers its champion.

    Workers that end a sweep together write the same tags at once; on a database server the
    second INSERT of a tag loses (unique key) and MLflow answers BAD_REQUEST. The writes are
    idempotent, so they are made again, when the rows exist and become updates.
    """
    from mlflow.exceptions import MlflowException

    def raced(err: Exception) -> bool:
        return isinstance(err, MlflowException) and lost_race(err)

    def warn(err: Exception, wait: float) -> None:
        log.warning("another worker tagged the sweep's parent run at once; again in %.0f s", wait)

    again = Backoff(first=1.0, most=2.0, patience=3.5)  # three tries: now, after 1 s, after 2 s
    again_while(lambda: _finish_parent(client, run, parent_id, study, status), raced, again, warn)


def _finish_parent(
    client: MlflowClient, run: RunConfig, parent_id: str, study: Any, status: str
) -> None:
    for key, value in bookkeeping_tags(study, trial_counts(study)).items():
        client.set_tag(parent_id, key, value)
    child_id = carry_best(client, parent_id, study)
    if child_id is not None and status == "FINISHED":
        model = register_best(client, run, child_id)
        if model:
            client.set_tag(parent_id, "sweep.champion", model)
