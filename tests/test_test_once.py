"""benchmarks/test_once.py: a validation-only run's best checkpoint tested once, into its run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_overrides
from mlflow import MlflowClient

from tunelab.config.validate import load_config
from tunelab.run.pipeline import run_experiment

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "test_once.py"


def run_script(run_dir: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), str(run_dir)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # over 10 s: the default run stays under 10 minutes
def test_the_chosen_candidate_is_tested_once_into_its_own_run(workdir, tiny_bert, intent_data):
    args = tiny_overrides(tiny_bert, intent_data, "trainer.limit_test_batches=0")
    _cfg, run = load_config([*args, "export.save_model=false", "logger.log_model=false"])
    candidate = run_experiment(run)
    client = MlflowClient("sqlite:///mlflow.db")
    assert "test/acc" not in client.get_run(candidate.run_id).data.metrics  # test split unread

    proc = run_script(candidate.run_dir)
    assert proc.returncode == 0, proc.stderr
    tested = client.get_run(candidate.run_id)
    assert tested.info.status == "FINISHED"
    assert tested.data.metrics["test/acc"] == json.loads(proc.stdout)["test/acc"]
    assert "test/ece" in tested.data.metrics  # the classification report ran on the test split
    assert tested.data.tags["tunelab.tested_once"].startswith("best-")
    assert len(client.search_runs([candidate.experiment_id])) == 1  # no second run made

    again = run_script(candidate.run_dir)  # the test split is scored once per recipe
    assert again.returncode == 1
    assert again.stderr.startswith("error: ") and "tested once already" in again.stderr
    assert "Traceback" not in again.stderr
