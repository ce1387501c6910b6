"""The whole `run.py` flow on a tiny BERT: fit, test the best checkpoint, export, MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_overrides
from mlflow import MlflowClient

import run as cli


@pytest.fixture()
def finished_run(workdir: Path, tiny_bert: Path, intent_data: Path) -> MlflowClient:
    args = ["experiment=quickstart", *tiny_overrides(tiny_bert, intent_data), "optim.lr=5e-3"]
    assert cli.main(args) == 0
    return MlflowClient("sqlite:///mlflow.db")


def test_run_logs_params_metrics_tags_and_artifacts(finished_run: MlflowClient, workdir: Path):
    [experiment] = [e for e in finished_run.search_experiments() if e.name == "tunelab"]
    [run] = finished_run.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["method.name"] == "lora" and params["method.r"] == "8"
    assert params["optim.lr"] == "0.005" and params["data.path"] == "intents"
    for key in ("train/loss_epoch", "val/loss", "val/acc", "val/f1", "test/acc", "test/f1",
                "train/lr", "params/trainable", "params/total"):
        assert key in metrics, key
    assert metrics["params/trainable"] < metrics["params/total"]
    assert tags["method"] == "lora" and tags["dataset"] == "text_classification"
    assert len(tags["git_commit"]) >= 7
    artifacts = {a.path for a in finished_run.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "label_map.json", "test_metrics.json", "model"} <= artifacts
    model_files = {Path(a.path).name for a in finished_run.list_artifacts(run.info.run_id, "model")}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= model_files
    [run_dir] = (workdir / "outputs" / "quickstart").iterdir()
    assert json.loads((run_dir / "label_map.json").read_text())["0"] == "card_lost"


def test_learns_the_fixture(finished_run: MlflowClient):
    [run] = finished_run.search_runs(
        [e.experiment_id for e in finished_run.search_experiments()]
    )
    history = finished_run.get_metric_history(run.info.run_id, "train/loss_step")
    assert history[-1].value < history[0].value
    assert run.data.metrics["test/acc"] > 0.5  # 4 balanced classes: chance is 0.25
