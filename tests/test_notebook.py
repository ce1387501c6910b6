"""Slow: `notebooks/quickstart.ipynb` runs top to bottom in a real Jupyter kernel (nbclient)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import INTENTS, REPO, write_intents

from tunelab.base.data_root import data_root

NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def banking77_root(tmp_path: Path) -> Path:
    """The data root: the real BANKING77 under the data root, else a small copy in its format."""
    real = Path(data_root())
    if (real / "banking77" / "categories.json").exists():
        return real
    folder = write_intents(tmp_path / "data" / "banking77", rows_per_class=120)
    (folder / "categories.json").write_text(json.dumps(sorted(INTENTS)))
    return tmp_path / "data"


@pytest.mark.slow
def test_quickstart_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("TUNELAB_REPO", str(REPO))
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(banking77_root(tmp_path)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    try:
        client.execute()  # raises CellExecutionError, with the cell and its traceback
    finally:
        nbformat.write(notebook, tmp_path / "executed.ipynb")  # for a look after a failure
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "parameters trained" in text and "->" in text  # fine-tuned, then predicted
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the loss plot and the comparison plot
    assert (tmp_path / "mlflow.db").exists()
    assert list((tmp_path / "outputs").glob("compare_quickstart/*/compare.csv"))
