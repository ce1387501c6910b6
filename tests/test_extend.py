"""Adding a method or a dataset is one .py and one YAML: proven in a copy of the repository.

The copy gets `modules/my_ia3.py` + `configs/method/my_ia3.yaml` (copies of IA3's with the
names changed) and `datamodules/my_csv.py` + `configs/data/my_csv.yaml` (copies of the CSV
loader's); no other file is touched, and `run.py` trains with both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

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
