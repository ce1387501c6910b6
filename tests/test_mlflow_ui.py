"""The real MLflow UI over tunelab runs, in headless Chromium (Debian package `chromium`):
three methods and a small sweep are trained, `mlflow ui` is started on 127.0.0.1 and every
page of `benchmarks/mlflow_screenshots.py` is rendered to a PNG."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from conftest import REPO


def load_script():
    path = REPO / "benchmarks" / "mlflow_screenshots.py"
    spec = importlib.util.spec_from_file_location("mlflow_screenshots", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_screenshots_of_runs_table_methods_and_sweep(tmp_path: Path, tiny_bert: Path):
    from mlflow import MlflowClient
    from PIL import Image

    assert shutil.which("chromium"), "headless Chromium is needed: apt-get install -y chromium"
    script = load_script()
    store = tmp_path / "store"
    store.mkdir()
    script.populate(store, str(tiny_bert), epochs=1, trials=2)

    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    names = {r.info.run_name for r in runs}
    assert {"lora r=16 lr=2e-3", "ia3 lr=1e-2", "full lr=1e-4"} <= names, names
    assert sum(r.data.tags.get("sweep.role") == "parent" for r in runs) == 1
    assert sum(r.info.run_name.startswith("#") for r in runs) == 2

    saved = script.screenshots(store, tmp_path / "shots")
    assert [p.name for p in saved] == [
        "mlflow_runs_table.png",
        "mlflow_compare_methods.png",
        "mlflow_sweep_trials.png",
        "mlflow_sweep_parent.png",
    ]
    for png in saved:
        image = Image.open(png)
        assert image.size == (script.CROP, script.SIZE[1])
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 8  # not blank
