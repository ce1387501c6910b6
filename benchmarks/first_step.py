"""Time to first step: process start to the first optimiser step of a real `run.py` run.

    python benchmarks/first_step.py [--runs 3] [--cold] [--label NAME]
        [--recipes quickstart lora_tiny_mistral] [--out benchmarks/results/first_step.md]

Each run is a fresh `python run.py experiment=NAME trainer.max_steps=1 ...` process (validation,
test and export skipped) started in one scratch folder, so its MLflow store is a new SQLite file
there; `perf/time_to_first_step_s` (logged by `callbacks.first_step.TimeToFirstStep`) is read
back from it with `MlflowClient`. The first run also creates that store. `--cold` points
`TUNELAB_CACHE` and `HF_DATASETS_CACHE` at a new empty folder for every run, so data is
tokenised again. A section (`--label`, the median and every run per recipe) is appended to
`--out`; the file starts with the machine it was measured on.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
METRIC = "perf/time_to_first_step_s"
SKIP = [
    "trainer.max_steps=1",
    "trainer.limit_val_batches=0",
    "trainer.limit_test_batches=0",
    "trainer.num_sanity_val_steps=0",
    "export.save_model=false",
    "logger.log_model=false",
]
EXTRA = {"lora_tiny_mistral": [f"model.name_or_path={REPO / 'tiny_models' / 'mistral'}"]}


def ensure_tiny_mistral() -> None:
    """Build the offline tiny Mistral (`tools.tiny_models`) when it is missing."""
    if not (REPO / "tiny_models" / "mistral" / "config.json").exists():
        build = "-m tools.tiny_models --arch mistral --out tiny_models/mistral --data medquad"
        subprocess.run([sys.executable, *build.split()], cwd=REPO, check=True)


def command(recipe: str, scratch: Path) -> list[str]:
    """The `run.py` command line of one measured run of `recipe`."""
    return [
        sys.executable,
        str(REPO / "run.py"),
        f"experiment={recipe}",
        *SKIP,
        *EXTRA.get(recipe, []),
        f"logger.tracking_uri=sqlite:///{scratch / 'mlflow.db'}",
        f"logger.experiment_name=first_step_{recipe}",
    ]


def run_once(recipe: str, scratch: Path, cold: bool) -> float:
    """Run `recipe` once in a fresh process; return its process wall time in seconds."""
    env = dict(os.environ)
    if cold:
        cache = Path(tempfile.mkdtemp(prefix="cold_", dir=scratch))
        env |= {"TUNELAB_CACHE": str(cache), "HF_DATASETS_CACHE": str(cache / "datasets")}
    started = time.perf_counter()
    done = subprocess.run(command(recipe, scratch), cwd=scratch, env=env, capture_output=True)
    if done.returncode:
        sys.exit(f"{recipe} failed ({done.returncode}):\n{done.stderr.decode()[-3000:]}")
    return time.perf_counter() - started


def logged_values(scratch: Path, recipe: str) -> list[float]:
    """`perf/time_to_first_step_s` of every run of `recipe` in the scratch store, oldest first."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{scratch / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"first_step_{recipe}")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return [run.data.metrics[METRIC] for run in runs]


def measure(recipe: str, runs: int, cold: bool, scratch: Path) -> dict:
    """Median and every run's time to first step (and process wall time) of `recipe`."""
    walls = []
    for n in range(runs):
        walls.append(run_once(recipe, scratch, cold))
        print(f"{recipe} run {n + 1}/{runs}: process {walls[-1]:.1f} s", flush=True)
    firsts = logged_values(scratch, recipe)
    return {"recipe": recipe, "firsts": firsts, "walls": walls}


def cpu_model() -> str:
    """The CPU's model name as `lscpu` gives it ("?" when it gives none)."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    names = [line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line]
    return names[0] if names else "?"


def machine() -> str:
    """CPU model, core count and date of this machine, one markdown line."""
    return (
        f"Machine: {cpu_model()}, {os.cpu_count()} cores; first measured {datetime.now():%Y-%m-%d}."
    )


def header() -> str:
    """The results file's title, machine and the command each run is."""
    run = shlex.join(["python", "run.py", "experiment=NAME", *SKIP])
    return (
        f"# Time to first step\n\n{machine()}\n\nEach run: `{run}` (tiny Mistral: plus "
        "`model.name_or_path=<repo>/tiny_models/mistral`), from a scratch folder.\n"
    )


def section(label: str, rows: list[dict], args: argparse.Namespace) -> str:
    """One markdown section: what was run, then a row per recipe."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"## {label} ({datetime.now():%Y-%m-%d %H:%M}, {'cold' if args.cold else 'warm'} cache)",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/first_step.py', *sys.argv[1:]])}`; load "
        f"average at the end {load} (a machine shared with training jobs: use the medians).",
        "",
        "| recipe | median time to first step | runs | process wall time (runs) |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        firsts = ", ".join(f"{x:.1f}" for x in row["firsts"])
        walls = ", ".join(f"{x:.1f}" for x in row["walls"])
        median = statistics.median(row["firsts"])
        lines.append(f"| {row['recipe']} | {median:.1f} s | {firsts} | {walls} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Measure each recipe `--runs` times and append the section to `--out`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="fresh tokenisation cache per run")
    parser.add_argument("--recipes", nargs="+", default=["quickstart", "lora_tiny_mistral"])
    parser.add_argument("--label", default="measured")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/first_step.md")
    args = parser.parse_args()
    if "lora_tiny_mistral" in args.recipes:
        ensure_tiny_mistral()
    with tempfile.TemporaryDirectory(prefix="first_step_") as folder:
        rows = [measure(r, args.runs, args.cold, Path(folder)) for r in args.recipes]
    text = section(args.label, rows, args)
    print(text)
    if not args.out.exists():
        args.out.write_text(header())
    with args.out.open("a") as handle:
        handle.write("\n" + text)


if __name__ == "__main__":
    main()
