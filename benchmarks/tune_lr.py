"""A learning rate per method, chosen on validation accuracy: the lrs of the method comparison.

    export TUNELAB_DATA_DIR=/work/shared/data
    python benchmarks/tune_lr.py [--methods full lora ...] [--train-samples 2000] [--epochs 2]

For each method, tunelab's own sweep runner (`sweep=lr`) trains the method's recipe
`experiments/<method>_minilm_banking77.yaml` at three learning rates: the recipe's lr and that lr
divided and multiplied by `--factor`. The 2026-11-27 run started from the papers' lrs; the recipes
now hold its winners, so a rerun searches around those. Pruning is
off and the three points are enqueued, so every method gets the same three-point grid on the same
reduced budget (training rows, epochs, seed and validation rows carved from train.csv). The lr
with the best `val/acc` wins; the test set is never looked at. `qlora` takes LoRA's lr (same
adapters on a 4-bit base) and `distill` full fine-tuning's (every student weight trains), so they
are not searched. Every sweep lands in MLflow experiment `tune_lr` (a parent run per method).
Writes `benchmarks/results/tune_lr.md`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the repo is run from its root, not installed
# Every method YAML but distillation (it needs a trained teacher first).
METHODS = [
    p.stem for p in sorted((REPO / "configs" / "method").glob("*.yaml")) if p.stem != "distill"
]


def recipe_lr(method: str) -> float:
    """The learning rate written in the method's recipe."""
    from tunelab.config.validate import load_config

    _, run = load_config([f"experiment={method}_minilm_banking77"])
    return run.optim.lr


def grid(lr: float, factor: float) -> list[float]:
    """`lr / factor`, `lr`, `lr * factor`, rounded to two significant digits."""
    return [float(f"{value:.2g}") for value in (lr / factor, lr, lr * factor)]


def sweep_args(method: str, lrs: list[float], args: argparse.Namespace) -> list[str]:
    """CLI overrides of one method's three-point lr sweep."""
    choices = ", ".join(str(lr) for lr in lrs)
    queued = ", ".join(f"{{optim.lr: {lr}}}" for lr in lrs)
    return [
        f"experiment={method}_minilm_banking77",
        "sweep=lr",
        f"sweep.n_trials={len(lrs)}",
        "sweep.pruner=none",
        f"sweep.study_name=tune_lr_{method}",
        f"sweep.params={{optim.lr: {{type: categorical, choices: [{choices}]}}}}",
        f"sweep.enqueue=[{queued}]",
        f"sweep.best_experiment_dir={Path.cwd() / 'experiments'}",
        f"data.max_train_samples={args.train_samples}",
        f"data.val_size={args.val_samples}",
        f"trainer.max_epochs={args.epochs}",
        f"seed={args.seed}",
        "trainer.enable_progress_bar=false",
        "export.save_model=false",
        "logger.experiment_name=tune_lr",
        "logger.tracking_uri=sqlite:///mlflow.db",
    ]


def tune(method: str, args: argparse.Namespace) -> dict:
    """Run one method's sweep in this process; return val acc per lr and the winner."""
    import run as cli

    lrs = grid(recipe_lr(method), args.factor)
    started = time.time()
    if cli.main(sweep_args(method, lrs, args)) != 0:
        raise SystemExit(f"lr sweep of {method} failed")
    study = optuna.load_study(study_name=f"tune_lr_{method}", storage="sqlite:///optuna.db")
    done = [t for t in study.trials if t.value is not None]
    scores = {t.params["optim.lr"]: t.value for t in done}
    return {
        "recipe_lr": lrs[1],
        "scores": scores,
        "best_lr": study.best_trial.params["optim.lr"],
        "minutes": (time.time() - started) / 60,
    }


def to_markdown(results: dict[str, dict], args: argparse.Namespace, command: str) -> str:
    """One row per method: val acc at each lr of its grid, the recipe lr and the winner."""
    lines = [
        "# Learning rate per method (BANKING77, all-MiniLM-L6-v2)",
        "",
        f"Command: `{command}`",
        "",
        f"Budget per trial: {args.train_samples} training rows, {args.epochs} epochs, "
        f"{args.val_samples} validation rows carved (stratified, seed {args.seed}) from "
        "train.csv; selection on val/acc, the test set unused. Grid: recipe lr / "
        f"{args.factor:g}, recipe lr, recipe lr x {args.factor:g}.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"no GPU, fp32, {args.threads} torch thread(s); "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "| method | val acc at lr / 3 | at recipe lr | at lr x 3 | recipe lr | best lr | minutes |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, res in results.items():
        cells = [f"{100 * acc:.2f} ({lr:g})" for lr, acc in sorted(res["scores"].items())]
        lines.append(
            f"| {method} | {' | '.join(cells)} | {res['recipe_lr']:g} | **{res['best_lr']:g}** "
            f"| {res['minutes']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--val-samples", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--factor", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (shared CPU)")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/tune_lr.md"))
    args = parser.parse_args()
    args.out = str(Path(args.out).resolve())  # the sweeps run in a scratch folder
    command = "python benchmarks/tune_lr.py " + " ".join(sys.argv[1:])
    import torch

    torch.set_num_threads(args.threads)
    os.chdir(tempfile.mkdtemp(prefix="tune_lr_"))  # own MLflow and Optuna SQLite files
    results = {}
    for method in args.methods:
        results[method] = tune(method, args)
        text = to_markdown(results, args, command)  # partial results survive a later failure
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
