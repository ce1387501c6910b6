"""Run every check on a `View` and gather the result: the content of `audit.json`."""

from __future__ import annotations

import time
from itertools import pairwise
from typing import Any

from tunelab.base.audit import duplicates, pairs, stats
from tunelab.base.audit.config import AuditConfig
from tunelab.base.audit.duplicates import Matches
from tunelab.base.audit.table import View

SHOWN = 200  # characters of a text shown in examples


def clip(text: str) -> str:
    """A text cut to SHOWN characters for the report."""
    return text if len(text) <= SHOWN else text[: SHOWN - 1] + "…"


def _pairs(view: View, split: str, found: list[tuple[int, int, float]], n: int) -> dict[str, Any]:
    texts = view.splits[split].texts
    examples = [
        {
            "row": i,
            "text": clip(texts[i]),
            "same_as_row": j,
            "same_as": clip(texts[j]),
            "similarity": round(s, 3),
        }
        for i, j, s in found[:n]
    ]
    return {"count": len(found), "examples": examples}


def _leaks(view: View, leaks: dict[int, list[int]], split: str, n: int) -> dict[str, Any]:
    texts, train = view.splits[split].texts, view.splits["train"].texts
    examples = [
        {
            "row": i,
            "text": clip(texts[i]),
            "train_rows": rows[:5],
            "train_text": clip(train[rows[0]]),
        }
        for i, rows in list(leaks.items())[:n]
    ]
    return {"count": len(leaks), "examples": examples}


def _conflicts(view: View, groups: list[list[tuple[str, int, str]]], n: int) -> dict[str, Any]:
    examples = [
        {
            "text": clip(view.splits[rows[0][0]].texts[rows[0][1]]),
            "rows": [{"split": s, "row": i, "label": clip(label)} for s, i, label in rows[:6]],
        }
        for rows in groups[:n]
    ]
    return {"count": len(groups), "rows": sum(map(len, groups)), "examples": examples}


def removable(matches: Matches, issues: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Train rows each cleaning setting (`data.drop_<name>`) removes, sorted.

    duplicates: later copies (exact or near) of an earlier train row; leaked: train rows whose
    text is (nearly) a validation or test text; conflicts: train rows of a text labelled two
    ways; label_issues: the label-error model's suspects. Validation and test stay as they are.
    """
    copies = {i for i, _, _ in matches.exact.get("train", []) + matches.near.get("train", [])}
    leaked = {j for rows in matches.leaks.values() for train in rows.values() for j in train}
    conflicted = {i for rows in matches.conflicts for s, i, _ in rows if s == "train"}
    return {
        "duplicates": sorted(copies),
        "leaked": sorted(leaked),
        "conflicts": sorted(conflicted),
        "label_issues": sorted(issue["row"] for issue in issues),
    }


def _label_issues(view: View, settings: AuditConfig, run_model: bool) -> tuple[list, str]:
    if view.kind != "classification":
        return [], f"not run: {view.kind} data has no class labels"
    if not run_model:
        return [], "not run (audit.label_model=false)"
    from tunelab.base.audit.label_model import label_issues

    train = view.splits["train"]
    issues = label_issues(train.texts, train.labels, view.model, view.max_length, settings)
    for issue in issues:
        issue.update(split="train", text=clip(train.texts[issue["row"]]))
    return issues, f"{len(issues)} suspects among {len(train)} train rows"


def _match_details(view: View, matches: Matches, n: int) -> dict[str, Any]:
    """Counts and `n` examples of each kind of match, for the report."""
    return {
        "exact_duplicates": {s: _pairs(view, s, p, n) for s, p in matches.exact.items()},
        "near_duplicates": {s: _pairs(view, s, p, n) for s, p in matches.near.items()},
        "leaks": {s: _leaks(view, rows, s, n) for s, rows in matches.leaks.items()},
        "conflicts": _conflicts(view, matches.conflicts, n),
    }


def _stats(view: View, settings: AuditConfig) -> dict[str, Any]:
    details: dict[str, Any] = {"balance": {}, "lengths": {}, "short_texts": {}}
    for split, rows in view.splits.items():
        details["balance"][split] = stats.balance(rows)
        details["lengths"][split] = stats.lengths(rows, view.max_length)
        short = stats.short_texts(rows, settings.short_words)
        shown = [{"row": i, "text": clip(rows.texts[i])} for i in short[: settings.examples]]
        details["short_texts"][split] = {"count": len(short), "examples": shown}
    if view.kind == "instruction":
        details["responses"] = stats.responses(view, settings.templated_min)
    if view.kind == "preference":
        details["pairs"] = pairs.details(view, settings.length_bias, settings.examples)
    return details


def audit(view: View, settings: AuditConfig, label_model: bool | None = None) -> dict[str, Any]:
    """Every finding on `view` (the content of `audit.json`).

    Args:
        view: the run's data.
        settings: thresholds and switches.
        label_model: run the label-error model (default: `settings.label_model`).
    """
    clock = {"start": time.perf_counter()}
    matches = duplicates.find(view, settings)
    clock["duplicates"] = time.perf_counter()
    details = _stats(view, settings) | _match_details(view, matches, settings.examples)
    clock["stats"] = time.perf_counter()
    run_model = settings.label_model if label_model is None else label_model
    issues, details["label_model"] = _label_issues(view, settings, run_model)
    clock["label_model"] = time.perf_counter()
    lengths = details["lengths"].values()
    steps = ["start", "duplicates", "stats", "label_model"]
    extra = {"degenerate_pairs": pairs.count(details["pairs"])} if "pairs" in details else {}
    return extra | {
        "data": view.name,
        "kind": view.kind,
        "model": view.model,
        "max_length": view.max_length,
        "rows": {split: len(rows) for split, rows in view.splits.items()},
        "exact_duplicates": sum(len(p) for p in matches.exact.values()),
        "near_duplicates": sum(len(p) for p in matches.near.values()),
        "cross_split_leaks": sum(len(rows) for rows in matches.leaks.values()),
        "label_conflicts": len(matches.conflicts),
        "truncated_rows": sum(len(x["cut"]) + len(x["no_room"]) for x in lengths),
        "short_texts": sum(x["count"] for x in details["short_texts"].values()),
        "label_issues": issues,
        "remove": removable(matches, issues),
        "details": details,
        "settings": settings.model_dump(),
        "seconds": {b: round(clock[b] - clock[a], 2) for a, b in pairwise(steps)},
    }
