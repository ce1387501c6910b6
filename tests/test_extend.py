"""Adding a method, a dataset or a task kind is new files only: proven in a copy of the repository.

The copy gets `modules/my_ia3.py` + `configs/method/my_ia3.yaml` (copies of IA3's with the
names changed) and `datamodules/my_csv.py` + `configs/data/my_csv.yaml` (copies of the CSV
loader's); no other file is touched, and `run.py` trains with both.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, tiny_overrides
from mlflow import MlflowClient

IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "outputs", "mlruns", "mlartifacts", "*.db", "__pycache__", "tiny_models"
)


def copy_renamed(repo: Path, source: str, target: str, names: dict[str, str]) -> None:
    """Copy `source` to `target` inside `repo`, replacing each key of `names` by its value."""
    text = (repo / source).read_text()
    for old, new in names.items():
        text = text.replace(old, new)
    (repo / target).write_text(text)


@pytest.mark.slow  # over 10 s: the default run stays under 10 minutes
def test_a_new_method_and_dataset_need_one_py_and_one_yaml_each(tmp_path, tiny_bert, intent_data):
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo, ignore=IGNORE)
    method = {"modules.ia3.IA3Method": "modules.my_ia3.MyIA3", "name: ia3": "name: my_ia3"}
    copy_renamed(repo, "configs/method/ia3.yaml", "configs/method/my_ia3.yaml", method)
    copy_renamed(repo, "modules/ia3.py", "modules/my_ia3.py", {"IA3Method": "MyIA3"})
    data = {
        "datamodules.text_classification.TextClassification": "datamodules.my_csv.MyCsv",
        "name: text_classification": "name: my_csv",
    }
    copy_renamed(repo, "configs/data/text_classification.yaml", "configs/data/my_csv.yaml", data)
    copy_renamed(
        repo,
        "datamodules/text_classification.py",
        "datamodules/my_csv.py",
        {"TextClassification": "MyCsv"},
    )
    overrides = [a for a in tiny_overrides(tiny_bert, intent_data) if not a.startswith("data=")]
    args = ["experiment=ia3_minilm_banking77", "method=my_ia3", "data=my_csv", *overrides]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "run.py", *args, "trainer.max_steps=2", "trainer.max_epochs=-1"]
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.tags["method"] == "my_ia3" and run.data.tags["dataset"] == "my_csv"
    assert "test/acc" in run.data.metrics
    listed = subprocess.run(
        [sys.executable, "run.py", "--help"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    assert "my_ia3" in listed and "my_csv" in listed


TWIN_RECIPE = """# python run.py experiment=my_intents
# LoRA on a classifier trained for the twin task kind `my_intents`.
defaults:
  - override /task: my_intents
  - override /method: lora
  - override /data: text_classification

name: my_intents
method:
  r: 4
"""


@pytest.mark.slow
def test_a_new_task_kind_needs_one_py_one_yaml_and_a_recipe(tmp_path, tiny_bert, intent_data):
    """A third task kind (a renamed twin of sequence classification), added as new files only,
    trains, tests, exports, is served by `mlflow models serve` and predicts through predict.py."""
    from test_serving import TEXTS, invoke, served

    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo, ignore=IGNORE)
    task = {
        "tasks.sequence_classification.SequenceClassification": "tasks.my_intents.MyIntents",
        "name: sequence_classification": "name: my_intents",
    }
    copy_renamed(
        repo, "configs/task/sequence_classification.yaml", "configs/task/my_intents.yaml", task
    )
    copy_renamed(
        repo,
        "tasks/sequence_classification.py",
        "tasks/my_intents.py",
        {"class SequenceClassification(": "class MyIntents("},
    )
    (repo / "experiments" / "my_intents.yaml").write_text(TWIN_RECIPE)
    overrides = [a for a in tiny_overrides(tiny_bert, intent_data) if not a.startswith("data=")]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "run.py", "experiment=my_intents", *overrides, "trainer.max_steps=2"]
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.params["task.name"] == "my_intents" and "test/acc" in run.data.metrics
    [run_dir] = (repo / "outputs" / "my_intents_intents").iterdir()  # named after its data
    info = json.loads((run_dir / "export" / "model_info.json").read_text())
    assert info["task"]["_target_"] == "tasks.my_intents.MyIntents"

    with served(f"runs:/{run.info.run_id}/model", repo) as url:
        answers = invoke(url, {"dataframe_records": [{"text": t} for t in TEXTS]})
    assert [set(a) for a in answers] == [{"label", "probability"}] * len(TEXTS)
    rows = tmp_path / "rows.csv"
    rows.write_text("id,text\n" + "".join(f"{i},{t}\n" for i, t in enumerate(TEXTS)))
    predicted = tmp_path / "predicted.csv"
    predict = [
        sys.executable,
        "predict.py",
        f"source={run_dir}",
        f"input={rows}",
        f"output={predicted}",
    ]
    done = subprocess.run(predict, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with predicted.open() as handle:
        labels = [row["label"] for row in csv.DictReader(handle)]
    assert labels == [a["label"] for a in answers]
