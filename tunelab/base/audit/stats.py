"""Class balance, token lengths against `max_length`, short texts and templated responses."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from tunelab.base.audit.table import Split, View, normalise

BINS = 20  # bars of the length histograms


def balance(rows: Split) -> dict[str, Any] | None:
    """Rows per class, the smallest and largest class and their ratio (None without classes)."""
    if not rows.classes:
        return None
    counts = Counter(rows.classes)
    (small, n_small), (large, n_large) = (
        min(counts.items(), key=lambda kv: kv[1]),
        max(counts.items(), key=lambda kv: kv[1]),
    )
    return {
        "classes": len(counts),
        "smallest": [small, n_small],
        "largest": [large, n_large],
        "imbalance_ratio": round(n_large / max(1, n_small), 2),
        "counts": dict(sorted(counts.items())),
    }


def _histogram(values: list[int], limit: int) -> dict[str, list[int]]:
    """Counts of `values` in BINS equal bins from 0 to max(values, limit)."""
    top = max([*values, limit, 1])
    width = max(1, -(-top // BINS))
    counts = [0] * (top // width + 1)
    for value in values:
        counts[value // width] += 1
    return {"edges": [k * width for k in range(len(counts) + 1)], "counts": counts}


def _quantiles(values: list[int]) -> dict[str, int]:
    ordered = sorted(values) or [0]
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": pick(0.5), "p95": pick(0.95), "max": ordered[-1]}


def lengths(rows: Split, max_length: int) -> dict[str, Any]:
    """Token lengths and the rows `max_length` cuts.

    Classification: texts longer than `max_length` (`cut`). Instruction data: prompts that leave
    no room for a response token (`no_room`) and responses cut short (`cut`). Preference pairs:
    the same, a pair counting as cut when its longer response is.
    """
    info: dict[str, Any] = _quantiles(rows.lengths) | {"hist": _histogram(rows.lengths, max_length)}
    if rows.response_lengths is None:
        cut = [i for i, n in enumerate(rows.lengths) if n > max_length]
        return info | {
            "cut": cut,
            "no_room": [],
            "share_cut": round(len(cut) / max(1, len(rows)), 4),
        }
    replies = rows.response_lengths
    if rows.rejected_lengths is not None:
        replies = list(map(max, replies, rows.rejected_lengths))
    pairs = list(zip(rows.lengths, replies, strict=True))
    no_room = [i for i, (p, _) in enumerate(pairs) if p >= max_length]
    cut = [i for i, (p, r) in enumerate(pairs) if p < max_length < p + r]
    share = (len(cut) + len(no_room)) / max(1, len(rows))
    totals = [p + r for p, r in pairs]
    return info | {
        "response": _quantiles(replies),
        "total": _quantiles(totals) | {"hist": _histogram(totals, max_length)},
        "cut": cut,
        "no_room": no_room,
        "share_cut": round(share, 4),
    }


def short_texts(rows: Split, words: int) -> list[int]:
    """Rows whose text has at most `words` words."""
    return [i for i, text in enumerate(rows.texts) if len(normalise(text).split()) <= words]


def responses(view: View, least: int) -> dict[str, Any]:
    """Instruction data: empty responses, and responses given verbatim to `least`+ prompts."""
    empty = {
        s: [i for i, r in enumerate(rows.labels) if not normalise(r)]
        for s, rows in view.splits.items()
    }
    prompts: dict[str, set[str]] = defaultdict(set)
    for rows in view.splits.values():
        for text, response in zip(rows.texts, rows.labels, strict=True):
            if normalise(response):
                prompts[normalise(response)].add(normalise(text))
    templated = {r: len(p) for r, p in prompts.items() if len(p) >= least}
    rows_templated = {
        s: [i for i, r in enumerate(rows.labels) if normalise(r) in templated]
        for s, rows in view.splits.items()
    }
    top = sorted(templated.items(), key=lambda kv: -kv[1])
    return {
        "empty": empty,
        "templated": rows_templated,
        "templates": [{"response": r[:200], "prompts": n} for r, n in top[:10]],
    }
