"""Every fine-tuning method on BANKING77 with all-MiniLM-L6-v2: same seed, split and budget.

Each method runs its own recipe `experiments/<method>_minilm_banking77.yaml` (which documents
its learning rate) through `tunelab.run.pipeline.run_experiment`, in a fresh child process so that
peak RSS is per method, and logs into one MLflow experiment (`compare_methods`) so the MLflow UI
compares them. `full` runs first: its export is the teacher of `distill`. Writes
`benchmarks/results/compare_methods.{md,csv}` and `accuracy_vs_params.png`.

    export TUNELAB_DATA_DIR=/work/shared/data
    nice -n 10 python benchmarks/compare_methods.py --max-train-samples 1500 --epochs 2

Without budget flags every method trains on all 9,002 training rows for its recipe's epochs
(hours on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.first_step import cpu_model  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
NUMBERS = ["lr", "val_acc", "test_acc", "test_f1", "trainable_params", "total_params"]
NUMBERS += ["trainable_pct", "peak_rss_mb", "train_samples_per_s", "wall_time_s"]
COLUMNS = ["method", "precision", *NUMBERS, "run_id"]


def order(method: str) -> tuple[int, str]:
    """Sort key: `full` first (distillation's teacher), `distill` last, the rest by name."""
    return ({"full": 0, "distill": 2}.get(method, 1), method)


def available_methods() -> list[str]:
    """Methods with a `<method>_minilm_banking77` recipe, `full` first and `distill` last."""
    found = {
        p.name.removesuffix("_minilm_banking77.yaml")
        for p in (REPO / "experiments").glob("*_minilm_banking77.yaml")
    }
    return sorted(found, key=order)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=None, help="default: every recipe")
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None, help="default: each recipe's")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--teacher", default=None, help="distill teacher (default: full's export)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--append", action="store_true", help="keep the other methods' rows of the last table"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    return parser.parse_args(argv)


def overrides(method: str, args: argparse.Namespace, teacher: str | None) -> list[str]:
    """The run.py arguments of one method under the shared budget."""
    result = [
        f"experiment={method}_minilm_banking77",
        f"seed={args.seed}",
        "logger.experiment_name=compare_methods",
        "trainer.enable_progress_bar=false",
        *args.overrides,
    ]
    if args.max_train_samples:
        result.append(f"data.max_train_samples={args.max_train_samples}")
    if args.epochs:
        result.append(f"trainer.max_epochs={args.epochs}")
    if method == "distill" and teacher:
        result.append(f"method.teacher={teacher}")
    return result


def run_child(method: str, args: argparse.Namespace) -> dict:
    """Run one method in this process and return its table row (called in a child process)."""
    from mlflow import MlflowClient

    from callbacks.throughput import Throughput
    from tunelab.config.validate import load_config
    from tunelab.run.pipeline import run_experiment
    from tunelab.tracking.report import quiet_libraries
    from tunelab.tracking.store import absolute_uri

    quiet_libraries()
    _cfg, run = load_config(overrides(method, args, args.teacher))
    meter = Throughput()  # the one `compare.py` uses
    result = run_experiment(run, callbacks=[meter])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    speed = meter.samples / max(meter.seconds, 1e-9)
    client = MlflowClient(absolute_uri(run.logger.tracking_uri))
    client.log_metric(result.run_id, "bench/peak_rss_mb", peak_mb)
    client.log_metric(result.run_id, "bench/train_samples_per_s", speed)
    history = client.get_metric_history(result.run_id, "val/acc")
    params = client.get_run(result.run_id).data.params
    return {
        "method": method,
        "precision": params.get("trainer.precision_used", run.trainer.precision),
        "lr": run.optim.lr,
        "val_acc": max((m.value for m in history), default=float("nan")),
        "test_acc": result.metrics["test/acc"],
        "test_f1": result.metrics["test/f1"],
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
        "trainable_pct": 100 * result.trainable_params / max(result.total_params, 1),
        "peak_rss_mb": peak_mb,
        "train_samples_per_s": speed,
        "wall_time_s": result.wall_time_s,
        "run_id": result.run_id,
        "export": str(Path(result.run_dir).resolve() / "export"),
    }


def spawn(method: str, args: argparse.Namespace, teacher: str | None) -> dict | None:
    """Run one method in a fresh Python process (per-method peak RSS); None if it failed."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, __file__, "--child", method, "--child-out", str(out)]
        cmd += ["--seed", str(args.seed)]
        if args.max_train_samples:
            cmd += ["--max-train-samples", str(args.max_train_samples)]
        if args.epochs:
            cmd += ["--epochs", str(args.epochs)]
        if teacher:
            cmd += ["--teacher", teacher]
        env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        code = subprocess.run([*cmd, *args.overrides], cwd=REPO, env=env).returncode
        if code != 0 or not out.exists():
            print(f"[compare] {method} failed (exit {code})", file=sys.stderr)
            return None
        return json.loads(out.read_text())


def budget_line(args: argparse.Namespace) -> str:
    rows = args.max_train_samples or "all 9,002"
    epochs = args.epochs or "each recipe's"
    val = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("data.val_size=")), "")
    return f"train rows: {rows}; epochs: {epochs}; seed {args.seed}; validation {val or '10%'}"


def write_table(rows: list[dict], args: argparse.Namespace, command: str) -> None:
    """`compare_methods.csv` (all columns) and `compare_methods.md` (budget, machine, table)."""
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "compare_methods.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Fine-tuning methods on BANKING77 (all-MiniLM-L6-v2)",
        "",
        f"- Budget: {budget_line(args)}. Test set: the official 3,080 rows.",
        f"- Machine: {cpu_model()}, {os.cpu_count()} CPU cores, no GPU, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; precision: each "
        "recipe's (`auto` resolves to bf16-mixed on a CPU with fast bf16, else 32-true).",
        f"- Command(s): {command}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        "MLflow experiment `compare_methods`.",
        "- Speed columns (train samples/s: training batches only; wall time: whole run) depend "
        "on the other jobs sharing the CPU at the time; compare them only within one invocation.",
        "",
        "| method | lr | precision | best val acc | test acc | macro-F1 | trainable params | % "
        "| peak RSS (MB) | train samples/s | wall time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['lr']:g} | {r['precision']} | {100 * r['val_acc']:.2f}% "
            f"| {100 * r['test_acc']:.2f}% "
            f"| {100 * r['test_f1']:.2f}% | {int(r['trainable_params']):,} "
            f"| {r['trainable_pct']:.2f} | {r['peak_rss_mb']:.0f} "
            f"| {r['train_samples_per_s']:.1f} | {r['wall_time_s']:.0f} |"
        )
    (args.out / "compare_methods.md").write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], args: argparse.Namespace) -> None:
    """Test accuracy against trainable parameters (log x), one labelled point per method."""
    from tunelab.run.compare_report import plot_scores

    percent = [r | {"test_acc_pct": 100 * r["test_acc"]} for r in rows]
    title = f"all-MiniLM-L6-v2 · {budget_line(args)}"
    ylabel = "BANKING77 test accuracy (%)"
    plot_scores(percent, args.out / "accuracy_vs_params.png", "test_acc_pct", ylabel, title)


def previous_rows(args: argparse.Namespace) -> list[dict]:
    """Rows of the existing `compare_methods.csv` (for `--append`), numbers parsed."""
    path = args.out / "compare_methods.csv"
    if not (args.append and path.exists()):
        return []
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in NUMBERS:
            row[key] = float(row[key])
    return rows


def merge(rows: list[dict], row: dict) -> list[dict]:
    """`rows` with `row` replacing the row of the same method, in `order`."""
    kept = [r for r in rows if r["method"] != row["method"]] + [row]
    return sorted(kept, key=lambda r: order(r["method"]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        args.child_out.write_text(json.dumps(run_child(args.child, args)))
        return 0
    methods = args.methods or available_methods()
    command = "`python benchmarks/compare_methods.py " + " ".join(argv or sys.argv[1:]) + "`"
    md = args.out / "compare_methods.md"
    if args.append and md.exists():  # keep the commands that produced the kept rows
        [line] = [x for x in md.read_text().splitlines() if x.startswith("- Command(s): ")]
        command = line.removeprefix("- Command(s): ") + " then " + command
    rows, teacher, done = previous_rows(args), args.teacher, 0
    for method in methods:
        started = time.time()
        print(f"[compare] {method} ...", flush=True)
        row = spawn(method, args, teacher)
        if row is None:
            continue
        if method == "full" and not teacher:
            teacher = row["export"]
        rows, done = merge(rows, row), done + 1
        print(f"[compare] {method}: acc {row['test_acc']:.4f} in {time.time() - started:.0f} s")
        write_table(rows, args, command)  # keep partial results if a later method fails
    if rows:
        plot(rows, args)
    return 0 if done == len(methods) else 1


if __name__ == "__main__":
    sys.exit(main())
