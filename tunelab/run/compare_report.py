"""A method comparison's parent run in MLflow, its table (CSV + Markdown) and its plot."""

from __future__ import annotations

import csv
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

from tunelab.tracking.parent import ParentRun

COLUMNS = ["method", "lr", "lr_from", "score", "trainable_params", "total_params", "trainable_pct"]
COLUMNS += ["peak_memory_mb", "train_samples_per_s", "wall_time_s", "run_id", "error"]
TEXT_COLUMNS = ("method", "lr_from", "run_id", "error", "memory_kind")
# (row key, Markdown header, format) of the comparison table
TABLE = [
    ("method", "method", "{}"),
    ("lr", "lr", "{:g}"),
    ("lr_from", "lr from", "{}"),
    ("score", "{metric}", "{:.4f}"),
    ("trainable_params", "trainable params", "{:,.0f}"),
    ("trainable_pct", "% trainable", "{:.2f}"),
    ("peak_memory_mb", "peak memory (MiB)", "{:.0f}"),
    ("train_samples_per_s", "train samples/s", "{:.1f}"),
    ("wall_time_s", "wall time (s)", "{:.0f}"),
]


def open_parent(plan: Any, run: Any) -> ParentRun:
    """Create the comparison's parent run."""
    tags = {"method": ",".join(plan.methods), "compare.role": "parent"}
    params = {
        "compare.recipe": plan.recipe,
        "compare.methods": ",".join(plan.methods),
        "compare.tune_lr": plan.tune_lr,
        "compare.overrides": " ".join(plan.shared),
    }
    return ParentRun.open(run, f"compare_{plan.recipe}", tags, params)


def cell(row: dict[str, Any], key: str, fmt: str) -> str:
    """One formatted table cell; `-` for a missing or NaN value."""
    value = row.get(key)
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> list[str]:
    """Markdown lines of `rows` with `(key, header, format)` columns."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    lines += ["| " + " | ".join(cell(r, k, f) for k, _, f in columns) + " |" for r in rows]
    return lines


def plot_scores(rows: list[dict], path: Path, key: str, ylabel: str, title: str) -> None:
    """`key` against trainable parameters (log x), one labelled point per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        if not row.get("trainable_params") or row.get(key) in (None, ""):
            continue
        point = (float(row["trainable_params"]), float(row[key]))
        axes.scatter(*point)
        axes.annotate(row["method"], point, fontsize=9, xytext=(4, 4), textcoords="offset points")
    axes.set_xscale("log")
    axes.set(xlabel="trainable parameters (log scale)", ylabel=ylabel)
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def borrowed_lr_note(rows: list[dict[str, Any]]) -> list[str]:
    """A note naming the methods that ran at a learning rate set for another method."""
    borrowed = [r for r in rows if str(r.get("lr_from", "")).startswith("recipe (")]
    if not borrowed:
        return []
    names = ", ".join(r["method"] for r in borrowed)
    owner = borrowed[0]["lr_from"].removeprefix("recipe (").removesuffix("'s)")
    return [
        "",
        f"Note: {names} ran at the recipe's learning rate, which was set for {owner}, not for "
        "them; a low score there may be that rate, not the method. Rerun with `tune_lr=true` "
        "to give each method its own (a short learning-rate sweep on validation first), or "
        "set `optim.lr=` yourself.",
    ]


def write(rows: list[dict[str, Any]], metric: str, plan: Any, folder: Path) -> list[Path]:
    """Write `compare.csv`, `compare.md` and `score_vs_params.png` into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "compare.csv", folder / "compare.md", folder / "score_vs_params.png"]
    with open(paths[0], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*COLUMNS, "memory_kind"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    columns = [(k, h.format(metric=metric), f) for k, h, f in TABLE]
    kinds = sorted({r.get("memory_kind", "") for r in rows} - {""})
    own = ["methods=[" + ",".join(plan.methods) + "]", *(["tune_lr=true"] if plan.tune_lr else [])]
    command = " ".join([*plan.shared, *own, *plan.sweep_args])
    lines = [
        f"# Methods on `{plan.recipe}` (score: `{metric}`)",
        "",
        f"- Command: `python compare.py {command}`",
        f"- Machine: {os.cpu_count()} CPU cores, {platform.machine()}; "
        f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- Peak memory: {', '.join(kinds) or '-'} (cpu_rss: process RSS during training; "
        "cuda_allocated: the CUDA allocator's peak). Speed: training batches only.",
        "",
        *markdown_table(rows, columns),
    ]
    lines += [f"- {r['method']} failed: {r['error']}" for r in rows if r["error"]]
    lines += borrowed_lr_note(rows)
    paths[1].write_text("\n".join(lines) + "\n")
    title = f"{plan.recipe} · {', '.join(plan.methods)}"
    plot_scores([r for r in rows if not r["error"]], paths[2], "score", metric, title)
    return paths


def close_parent(
    parent: ParentRun, rows: list[dict], metric: str, folder: Path, status: str
) -> None:
    """Log the table, the plot and one metric per method to the parent run; end it."""
    files = [folder / "compare.csv", folder / "compare.md", folder / "score_vs_params.png"]
    metrics = {
        f"compare/{row['method']}/{metric}": row["score"]
        for row in rows
        if not row["error"] and isinstance(row.get("score"), float)
    }
    parent.close(status, files, metrics)
