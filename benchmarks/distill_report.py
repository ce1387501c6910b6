"""Teacher vs distilled student on BANKING77: test accuracy, parameters, CPU inference speed.

Both models are evaluated here on the official test set (3,080 rows; `--max-rows N` keeps every
k-th row, so every class stays) in fp32, in the same process, one after the other; throughput is
test rows per second at `--batch-size` (tokenising included), after one warm-up batch. Writes
`benchmarks/results/compare_distill.md` and `.json`. Reference: DistilBERT kept 96.9% of BERT's
GLUE score at 1.63x CPU speed.

    export TUNELAB_DATA_DIR=/work/shared/data
    nice -n 10 python benchmarks/distill_report.py --teacher mlflow:<id> --student mlflow:<id>

Without `--teacher/--student`, the `full` and `distill` rows of
`benchmarks/results/compare_methods.csv` are used.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"
DISTILBERT = {"retained": 96.9, "speedup": 1.63}  # Sanh et al. 2019, GLUE, CPU


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", help="export folder or mlflow:<run_id>")
    parser.add_argument("--student", help="export folder or mlflow:<run_id>")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data-dir", default=os.environ.get("TUNELAB_DATA_DIR", "data"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--max-rows", type=int, default=None, help="every k-th test row only")
    return parser.parse_args(argv)


def from_comparison(method: str) -> str:
    """`mlflow:<run_id>` of `method` in the last `compare_methods.csv`."""
    with open(RESULTS / "compare_methods.csv") as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    if method not in rows:
        sys.exit(f"no '{method}' row in {RESULTS / 'compare_methods.csv'}; pass --{method}")
    return f"mlflow:{rows[method]['run_id']}"


def load_test(data_dir: str) -> tuple[list[str], list[str]]:
    """BANKING77 test texts and category names (a real CSV parser: some texts hold newlines)."""
    with open(Path(data_dir) / "banking77" / "test.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [r["text"] for r in rows], [r["category"] for r in rows]


def evaluate(folder: Path, texts: list[str], names: list[str], batch_size: int) -> dict:
    """Accuracy, macro-F1, parameters and rows/s of one exported classifier."""
    import torch
    from torchmetrics.functional.classification import multiclass_f1_score
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    labels = torch.tensor([model.config.label2id[n] for n in names])
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    predictions, seconds = [], 0.0
    with torch.inference_mode():
        model(**tokenizer(batches[0], padding=True, truncation=True, return_tensors="pt"))
        for batch in batches:
            started = time.perf_counter()
            inputs = tokenizer(
                batch, padding=True, truncation=True, max_length=64, return_tensors="pt"
            )
            predictions.append(model(**inputs).logits.argmax(-1))
            seconds += time.perf_counter() - started
    predicted = torch.cat(predictions)
    classes = model.config.num_labels
    return {
        "folder": str(folder),
        "layers": model.config.num_hidden_layers,
        "params": sum(p.numel() for p in model.parameters()),
        "test_acc": (predicted == labels).float().mean().item(),
        "test_f1": multiclass_f1_score(predicted, labels, classes, average="macro").item(),
        "samples_per_s": len(texts) / seconds,
        "rows": len(texts),
    }


def write_report(teacher: dict, student: dict, args: argparse.Namespace) -> dict:
    """The markdown table and the json, with retained accuracy and speed-up."""
    import torch

    summary = {
        "teacher": teacher,
        "student": student,
        "retained_acc_pct": 100 * student["test_acc"] / max(teacher["test_acc"], 1e-9),
        "speedup": student["samples_per_s"] / teacher["samples_per_s"],
        "param_ratio": student["params"] / teacher["params"],
        "batch_size": args.batch_size,
        "cpu_threads": torch.get_num_threads(),
    }
    lines = [
        "# Distillation: teacher vs student on BANKING77 (all-MiniLM-L6-v2)",
        "",
        f"- Command: `python benchmarks/distill_report.py {' '.join(sys.argv[1:])}`",
        f"- Inference: fp32, batch {args.batch_size}, {summary['cpu_threads']} threads on "
        f"{os.cpu_count()} shared CPU cores, {teacher['rows']:,} test rows, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "| model | layers | params | test acc | macro-F1 | rows/s |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in (("teacher", teacher), ("student", student)):
        lines.append(
            f"| {name} | {row['layers']} | {row['params']:,} | {100 * row['test_acc']:.2f}% "
            f"| {100 * row['test_f1']:.2f}% | {row['samples_per_s']:.0f} |"
        )
    lines += [
        "",
        f"Student keeps **{summary['retained_acc_pct']:.1f}%** of the teacher's accuracy at "
        f"**{summary['speedup']:.2f}x** its speed with {100 * summary['param_ratio']:.0f}% of "
        f"its parameters (DistilBERT: {DISTILBERT['retained']}% at {DISTILBERT['speedup']}x).",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare_distill.md").write_text("\n".join(lines) + "\n")
    (args.out / "compare_distill.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    from modules.distill import resolve_teacher

    args = parse_args(argv)
    uri = args.tracking_uri or f"sqlite:///{REPO / 'mlflow.db'}"
    texts, names = load_test(args.data_dir)
    if args.max_rows:  # the file is sorted by class: a stride keeps every class
        step = -(-len(texts) // args.max_rows)
        texts, names = texts[::step], names[::step]
    rows = {}
    for role in ("teacher", "student"):
        spec = getattr(args, role) or from_comparison("full" if role == "teacher" else "distill")
        rows[role] = evaluate(resolve_teacher(spec, uri), texts, names, args.batch_size)
        print(f"{role}: {rows[role]}", flush=True)
    summary = write_report(rows["teacher"], rows["student"], args)
    print((args.out / "compare_distill.md").read_text())
    return 0 if summary else 1


if __name__ == "__main__":
    sys.exit(main())
