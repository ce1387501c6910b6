"""Is a run repeatable on CPU, and what does `trainer.deterministic=true` cost?

    python benchmarks/determinism.py [--recipe freeze_minilm_banking77] [--steps 60]
        [--out benchmarks/results/determinism.md]

Runs the recipe for `--steps` optimiser steps (validation on 8 batches every `--steps // 2`,
no test or export) as fresh `run.py` processes: twice with `trainer.deterministic=false` and
twice with `true` at one thread, interleaved, then once with two threads. Each run's per-step
`train/loss` and its `val/acc` are read back from its own MLflow store; the report says whether
the repeats match bit for bit, how far one thread count is from the other, and the time of
each run: the process (start to exit) and its MLflow run (data setup, training, validation);
only the difference between settings says what determinism costs. Run it on an otherwise idle
machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the repo is run from its root, not installed
from benchmarks.first_step import cpu_model  # noqa: E402

QUIET = [
    "trainer.limit_val_batches=8",  # 256 validation rows: enough to see two runs part
    "trainer.limit_test_batches=0",
    "export.save_model=false",
    "logger.log_model=false",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]


def run_once(args: argparse.Namespace, deterministic: bool, threads: int, scratch: Path) -> dict:
    """One `run.py` process; its losses by step, last `val/acc` and wall seconds."""
    from mlflow import MlflowClient

    folder = Path(tempfile.mkdtemp(dir=scratch))
    command = [
        sys.executable,
        str(REPO / "run.py"),
        f"experiment={args.recipe}",
        f"trainer.max_steps={args.steps}",
        f"trainer.val_check_interval={args.steps // 2}",
        f"trainer.deterministic={str(deterministic).lower()}",
        f"output_root={folder / 'outputs'}",
        f"logger.tracking_uri=sqlite:///{folder / 'mlflow.db'}",
        *QUIET,
    ]
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    losses = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
    return {
        "deterministic": deterministic,
        "threads": threads,
        "losses": [m.value for m in losses],
        "val_acc": run.data.metrics.get("val/acc", float("nan")),
        "seconds": seconds,
        "run_seconds": (run.info.end_time - run.info.start_time) / 1000,
    }


def largest_gap(first: dict, second: dict) -> float:
    """The largest difference between two runs' losses at the same step."""
    return max(abs(a - b) for a, b in zip(first["losses"], second["losses"], strict=True))


def report(runs: list[dict], args: argparse.Namespace) -> str:
    """The Markdown section: one row per run, then what matched."""
    lines = [
        f"## {datetime.now():%Y-%m-%d %H:%M}, {cpu_model()}, {os.cpu_count()} cores",
        "",
        f"`python benchmarks/determinism.py --recipe {args.recipe} --steps {args.steps}`",
        "",
        "| deterministic | threads | process s | MLflow run s | last train/loss | val/acc |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        lines.append(
            f"| {run['deterministic']} | {run['threads']} | {run['seconds']:.1f} | "
            f"{run['run_seconds']:.1f} | "
            f"{run['losses'][-1]:.6f} | {run['val_acc']:.4f} |"
        )
    free = [r for r in runs if not r["deterministic"] and r["threads"] == 1]
    fixed = [r for r in runs if r["deterministic"] and r["threads"] == 1]
    two = [r for r in runs if r["threads"] == 2]
    lines += [
        "",
        f"- repeats without `deterministic`: largest loss gap {largest_gap(*free[:2]):.3g}",
        f"- repeats with `deterministic`: largest loss gap {largest_gap(*fixed[:2]):.3g}",
        f"- deterministic against not: largest loss gap {largest_gap(free[0], fixed[0]):.3g}",
        f"- two threads against one: largest loss gap {largest_gap(free[0], two[0]):.3g}",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the five processes (interleaved), print and append the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="freeze_minilm_banking77")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/determinism.md"))
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for deterministic in (False, True, False, True):
            runs.append(run_once(args, deterministic, 1, Path(scratch)))
        runs.append(run_once(args, False, 2, Path(scratch)))
    text = report(runs, args)
    print(text)
    with open(args.out, "a") as out:
        out.write(text + "\n")


if __name__ == "__main__":
    main()
