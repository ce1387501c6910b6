"""A parent run in MLflow holding nested child runs: a sweep's study, a method comparison.

Child runs point at it with the `mlflow.parentRunId` tag (Lightning's logger, `tag_child`); the
parent keeps the whole's params, tables, plots and one metric per child, and ends with the study
or comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.base.schema import RunConfig
from tunelab.tracking.store import absolute_uri, ensure_experiment, run_tags

PARAM_LIMIT = 6000  # characters MLflow keeps of one param value


@dataclass
class ParentRun:
    """An open parent run: its MLflow client, run id and experiment id."""

    client: Any
    run_id: str
    experiment_id: str

    @classmethod
    def open(cls, run: RunConfig, name: str, tags: dict[str, str], params: dict) -> ParentRun:
        """Create a parent run in `run`'s experiment, tagged like a run of its config.

        Args:
            run: the validated config the children share (its tracking URI and experiment).
            name: the parent run's name.
            tags: tags beside the config's own (`run_tags`).
            params: params of the whole (e.g. the search space, the compared methods).
        """
        from mlflow import MlflowClient
        from mlflow.entities import Param

        uri = absolute_uri(run.logger.tracking_uri)
        client = MlflowClient(uri)
        experiment_id = ensure_experiment(uri, run.logger.experiment_name)
        all_tags = run_tags(run.as_dict()) | tags
        run_id = client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id
        batch = [Param(key, str(value)[:PARAM_LIMIT]) for key, value in params.items()]
        client.log_batch(run_id, params=batch)
        return cls(client, run_id, experiment_id)

    @classmethod
    def reopen(cls, run: RunConfig, run_id: str) -> ParentRun | None:
        """The parent run `run_id` set RUNNING again (a resumed study), or None when it is gone."""
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient(absolute_uri(run.logger.tracking_uri))
        try:
            found = client.get_run(run_id)
        except MlflowException:
            return None
        if found.info.lifecycle_stage != "active":
            return None
        client.update_run(run_id, status="RUNNING")
        return cls(client, run_id, found.info.experiment_id)

    def close(self, status: str, files: list[Path], metrics: dict[str, float]) -> None:
        """Log the files that exist and the metrics, then end the run with `status`."""
        for path in files:
            if path.exists():
                self.client.log_artifact(self.run_id, str(path))
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, key, value)
        self.client.set_terminated(self.run_id, status)
