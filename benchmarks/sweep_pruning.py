"""The same Optuna sweep with and without pruning: best val acc, its test acc, training steps.

    export TUNELAB_DATA_DIR=/work/shared/data
    python benchmarks/sweep_pruning.py [--trials 6] [--epochs 3] [--train-samples 480]
        [--pruners none median hyperband]

LoRA on all-MiniLM-L6-v2 for BANKING77 (`experiment=lora_minilm_banking77 sweep=lora_rank_lr`),
at a reduced budget that fits a shared 2-core CPU. Both sweeps sample the same trials (seeded TPE
whose random start-up phase covers every trial), so the only difference is pruning. Runs in a
scratch folder (own MLflow and Optuna SQLite files); results go to a Markdown table.
Run it alone: its wall times assume a quiet CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the repo is run from its root, not installed

from callbacks.optuna_pruning import reports_per_epoch  # noqa: E402


def first_prunable_report(args: argparse.Namespace) -> int:
    """The first report a trial may be pruned at: median warm-up, first rung of the others."""
    return max(1, args.pruner_warmup)


def goal_verdict(gap_points: float, share: float) -> str:
    """Issue 5's goal: within 0.5 points of the unpruned best with at most 40% of its steps.

    Args:
        gap_points: best val acc of the unpruned sweep minus the pruned one's, in points.
        share: the pruned sweep's training steps over the unpruned one's (0..1).
    """
    return "met" if gap_points <= 0.5 and share <= 0.40 else "missed"


def study_name(args: argparse.Namespace, pruner: str) -> str:
    """One study per pruner setting; the unpruned one is shared by every setting."""
    if pruner == "none":
        return "bench_none"
    return f"bench_{pruner}_startup{args.pruner_startup}_warmup{args.pruner_warmup}"


def sweep_args(args: argparse.Namespace, pruner: str, folder: Path) -> list[str]:
    """CLI overrides of one sweep (identical except the pruner)."""
    return [
        "experiment=lora_minilm_banking77",
        "sweep=lora_rank_lr",
        f"sweep.n_trials={args.trials}",
        f"sweep.n_startup_trials={args.trials}",
        f"sweep.seed={args.seed}",
        f"sweep.pruner={pruner}",
        f"sweep.pruner_startup_trials={args.pruner_startup}",
        f"sweep.n_warmup_steps={args.pruner_warmup}",
        f"sweep.min_resource={first_prunable_report(args)}",
        f"sweep.study_name={study_name(args, pruner)}",
        f"sweep.best_experiment_dir={folder / 'experiments'}",
        f"data.max_train_samples={args.train_samples}",
        f"data.val_size={args.val_samples}",
        f"trainer.max_epochs={args.epochs}",
        f"trainer.val_check_interval={args.val_check_interval}",
        "trainer.enable_progress_bar=false",
        "export.save_model=false",
        "logger.tracking_uri=sqlite:///mlflow.db",
    ]


def summarise(study: optuna.Study) -> dict:
    """Best val acc, its test acc, total training steps, trial states and time of one study."""
    best = study.best_trial
    states = [t.state.name.lower() for t in study.trials]
    finished = [t for t in study.trials if t.datetime_complete is not None]
    wall_s = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in finished)
    return {
        "best_val_acc": best.value,
        "best_test_acc": best.user_attrs["test_metrics"]["test/acc"],
        "best_params": best.params,
        "steps": sum(t.user_attrs.get("train_steps", 0) for t in study.trials),
        "states": {s: states.count(s) for s in sorted(set(states))},
        "wall_s": wall_s,
    }


def run_one(args: argparse.Namespace, pruner: str, folder: Path) -> dict:
    """Run one sweep in-process (`run.main`), return its summary."""
    import run as cli

    os.chdir(folder)
    code = cli.main(sweep_args(args, pruner, folder))
    if code != 0:
        raise SystemExit(f"sweep with pruner={pruner} failed (exit {code})")
    study = optuna.load_study(study_name=study_name(args, pruner), storage="sqlite:///optuna.db")
    return summarise(study)


def budget_text(args: argparse.Namespace) -> str:
    """The sweeps' shared budget, in words."""
    per_epoch = reports_per_epoch(args.val_check_interval)
    reports = per_epoch * args.epochs
    first = first_prunable_report(args)
    return (
        f"{args.trials} trials per sweep, {args.epochs} epochs, {args.train_samples} training "
        f"rows, {args.val_samples} validation rows carved from train.csv, full test.csv (3,080 "
        "rows) for every completed trial; search space `sweeps/lora_rank_lr.yaml` (method.r, "
        f"method.alpha, optim.lr), seeded TPE (seed {args.seed}) in its random start-up phase, "
        f"so every sweep samples the same {args.trials} trials. Median pruner: "
        f"{args.pruner_startup} start-up trial(s), no pruning before report {first}; successive "
        f"halving: first rung at report {first}, reduction factor 3; Hyperband: min resource "
        f"{first} report(s), max {reports} reports, reduction factor 3. One report (val/acc) per "
        "validation, "
        f"{per_epoch} validation(s) per epoch, so {reports} reports per full trial."
    )


def to_markdown(args: argparse.Namespace, results: dict[str, dict], command: str) -> str:
    """The results table with the budget and machine it was measured on."""
    lines = [
        "# Sweep with vs without pruning (BANKING77, all-MiniLM-L6-v2, LoRA)",
        "",
        f"Command: `{command}`",
        "",
        f"Budget: {budget_text(args)}",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"no GPU, fp32, {args.threads} torch thread(s); date "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "| pruner | best val acc | its test acc | training steps | share of unpruned steps "
        "| trials | time in trials |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    plain = results.get("none")
    for name, res in results.items():
        share = f"{100 * res['steps'] / plain['steps']:.0f}%" if plain else "n/a"
        lines.append(
            f"| {name} | {100 * res['best_val_acc']:.2f} | {100 * res['best_test_acc']:.2f} | "
            f"{res['steps']} | {share} | {json.dumps(res['states'])} | "
            f"{res['wall_s'] / 60:.1f} min |"
        )
    lines.append("")
    for name, res in results.items():
        if plain and name != "none":
            gap = 100 * (plain["best_val_acc"] - res["best_val_acc"])
            share = res["steps"] / max(plain["steps"], 1)
            lines.append(
                f"- {name}: best val acc {gap:+.2f} points behind the unpruned sweep with "
                f"{100 * share:.0f}% of its training steps; goal (<= 0.5 points, <= 40%) "
                f"{goal_verdict(gap, share)}."
            )
    for name, res in results.items():
        lines.append(f"- best params, {name}: `{json.dumps(res['best_params'])}`")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-samples", type=int, default=480)
    parser.add_argument("--val-samples", type=int, default=308)
    parser.add_argument("--val-check-interval", type=float, default=1.0, help="epoch fraction")
    parser.add_argument("--seed", type=int, default=42, help="TPE seed: which random trials")
    parser.add_argument("--pruner-startup", type=int, default=1)
    parser.add_argument(
        "--pruner-warmup", type=int, default=0, help="first report a trial may be pruned at"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="reuse a folder: finished studies resume"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (shared CPU)")
    parser.add_argument("--pruners", nargs="+", default=["none", "median", "hyperband"])
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/sweep_pruning.md"))
    args = parser.parse_args()
    args.out = Path(args.out).resolve()  # the sweeps run in their own folder
    command = "python benchmarks/sweep_pruning.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if k not in ("out", "workdir")
    )
    import torch

    torch.set_num_threads(args.threads)  # oversubscribing a CPU shared by others is slower
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="sweep_pruning_"))
    results = {pruner: run_one(args, pruner, folder) for pruner in args.pruners}
    text = to_markdown(args, results, command)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
