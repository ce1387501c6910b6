"""Preference pairs: pairs that prefer nothing, reversed pairs, and the length bias.

A pair (prompt, chosen, rejected) teaches nothing when chosen equals rejected or either is empty
(the run refuses such rows; the audit lists them all at once), and contradicts another pair when
the same prompt prefers A over B in one row and B over A in another. A model can also learn the
length of a response instead of its content: if the chosen response is usually the longer one,
"prefer the longer" is a shortcut; the audit measures how often that rule picks the chosen one.
"""

from __future__ import annotations

from collections import defaultdict
from statistics import fmean
from typing import Any

from tunelab.base.audit.table import Split, View, normalise

Row = tuple[str, int, str]  # (split, row, "chosen > rejected") as the conflicts list them
CUT = 80  # characters of each response in a conflict's label


def _shown(chosen: str, rejected: str) -> str:
    return f"{chosen[:CUT]!r} > {rejected[:CUT]!r}"


def reversed_pairs(view: View) -> list[list[Row]]:
    """Per prompt, the rows whose preference another row of that prompt reverses (all splits).

    Row r reverses row q when r's rejected response is q's chosen one or r's chosen is q's
    rejected one (compared after `normalise`); pairs that prefer nothing are left out.
    """
    groups: dict[str, list[tuple[str, int, str, str]]] = defaultdict(list)
    for split, rows in view.splits.items():
        parts = zip(rows.texts, rows.labels, rows.rejected or [], strict=True)
        for i, (prompt, chosen, rejected) in enumerate(parts):
            pair = normalise(chosen), normalise(rejected)
            if pair[0] != pair[1]:
                groups[normalise(prompt)].append((split, i, *pair))
    found = []
    for members in groups.values():
        chosen = {c for *_, c, _ in members}
        rejected = {r for *_, r in members}
        hits = [(s, i, c, r) for s, i, c, r in members if r in chosen or c in rejected]
        if hits:
            found.append(
                [
                    (s, i, _shown(view.splits[s].labels[i], view.splits[s].rejected[i]))
                    for s, i, *_ in hits
                ]
            )
    return found


def degenerate(rows: Split) -> dict[str, list[int]]:
    """Rows with an empty prompt, chosen or rejected response, or chosen equal to rejected."""
    parts = list(zip(rows.texts, rows.labels, rows.rejected or [], strict=True))
    return {
        "empty_prompt": [i for i, (p, _, _) in enumerate(parts) if not p.strip()],
        "empty_chosen": [i for i, (_, c, _) in enumerate(parts) if not c.strip()],
        "empty_rejected": [i for i, (_, _, r) in enumerate(parts) if not r.strip()],
        "chosen_is_rejected": [
            i for i, (_, c, r) in enumerate(parts) if c.strip() and normalise(c) == normalise(r)
        ],
    }


def _summary(values: list[int]) -> dict[str, float]:
    ordered = sorted(values) or [0]
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"mean": round(fmean(ordered), 1), "p50": pick(0.5), "p95": pick(0.95)}


def length_bias(rows: Split) -> dict[str, Any]:
    """Chosen against rejected response tokens, and how often "prefer the longer" is right.

    `longer_wins` is the share of pairs in which the chosen response is the longer one (ties
    count half): 0.5 means length tells nothing; far from 0.5, length alone predicts the label.
    """
    chosen, rejected = rows.response_lengths or [], rows.rejected_lengths or []
    differences = [c - r for c, r in zip(chosen, rejected, strict=True)]
    n = max(1, len(chosen))
    longer, shorter = sum(d > 0 for d in differences), sum(d < 0 for d in differences)
    ties = len(chosen) - longer - shorter
    return {
        "chosen": _summary(chosen),
        "rejected": _summary(rejected),
        "chosen_longer": round(longer / n, 4),
        "chosen_shorter": round(shorter / n, 4),
        "ties": round(ties / n, 4),
        "mean_difference": round(fmean(differences or [0]), 1),
        "longer_wins": round((longer + ties / 2) / n, 4),
    }


def details(view: View, threshold: float, examples: int) -> dict[str, Any]:
    """Per split: the degenerate rows (with examples) and the length bias; the flagged splits.

    Args:
        view: preference data.
        threshold: `audit.length_bias`: a split is flagged when `longer_wins` is at least this
            far from 0.5.
        examples: rows shown per kind of degenerate pair.
    """
    found: dict[str, Any] = {"degenerate": {}, "lengths": {}, "biased": []}
    for split, rows in view.splits.items():
        bad = degenerate(rows)
        shown = sorted({i for kind in bad.values() for i in kind})[:examples]
        found["degenerate"][split] = bad | {
            "examples": [
                {
                    "row": i,
                    "prompt": rows.texts[i][:CUT],
                    "pair": _shown(rows.labels[i], rows.rejected[i]),
                }
                for i in shown
            ]
        }
        found["lengths"][split] = length_bias(rows)
        if abs(found["lengths"][split]["longer_wins"] - 0.5) >= threshold:
            found["biased"].append(split)
    return found


def count(found: dict[str, Any]) -> int:
    """Rows that prefer nothing (empty or chosen = rejected), over all splits, each once."""
    kinds = ("empty_prompt", "empty_chosen", "empty_rejected", "chosen_is_rejected")
    return sum(
        len({i for kind in kinds for i in bad[kind]}) for bad in found["degenerate"].values()
    )
