"""Write an audit's result as `audit.json`, `audit.md` and plots, and a terminal summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COUNTS = ("exact_duplicates", "near_duplicates", "cross_split_leaks", "label_conflicts")
MORE = ("truncated_rows", "short_texts")


def summary(result: dict[str, Any]) -> str:
    """A few lines for the terminal: the counts, the top label suspects, what cleaning removes."""
    rows = ", ".join(f"{s} {n:,}" for s, n in result["rows"].items())
    counts = ", ".join(f"{k.replace('_', ' ')} {result[k]:,}" for k in (*COUNTS, *MORE))
    issues = result["label_issues"]
    lines = [
        f"audit of {result['data']} ({rows} rows; {result['kind']}, "
        f"max_length {result['max_length']})",
        f"  {counts}",
        f"  label issues {len(issues):,} ({result['details']['label_model']})",
    ]
    for issue in issues[:3]:
        text = issue["text"][:60]
        lines.append(
            f"    train row {issue['row']}: {text!r} {issue['given']} -> {issue['suggested']}"
        )
    if "pairs" in result["details"]:
        lines.append(_pairs_line(result))
    remove = ", ".join(f"drop_{k} {len(v):,}" for k, v in result["remove"].items() if v)
    lines.append(f"  train rows each data.drop_* setting would remove: {remove or 'none'}")
    return "\n".join(lines)


def _pairs_line(result: dict[str, Any]) -> str:
    train = result["details"]["pairs"]["lengths"]["train"]
    biased = result["details"]["pairs"]["biased"]
    return (
        f"  pairs that prefer nothing (empty, chosen = rejected) {result['degenerate_pairs']:,}; "
        f"the longer response is the chosen one in {100 * train['longer_wins']:.0f}% of train "
        f"pairs{' (length bias in ' + ', '.join(biased) + ')' if biased else ''}"
    )


def _pairs_section(result: dict[str, Any]) -> list[str]:
    found = result["details"]["pairs"]
    lines = [
        "## Preference pairs",
        "",
        "A pair prefers nothing when a part is empty or chosen equals rejected (the run refuses "
        "it). `longer wins`: the share of pairs whose chosen response is the longer one (ties "
        "half); far from 50%, response length alone predicts the preference, a shortcut the "
        f"model can learn (flagged at `audit.length_bias` {result['settings']['length_bias']}).",
        "",
        "| split | empty prompt / chosen / rejected | chosen = rejected "
        "| chosen tokens mean/p50/p95 | rejected tokens mean/p50/p95 "
        "| chosen longer / shorter / same | longer wins |",
        "|---|---|---|---|---|---|---|",
    ]
    for split, bad in found["degenerate"].items():
        x = found["lengths"][split]
        tokens = lambda d: f"{d['mean']}/{d['p50']}/{d['p95']}"  # noqa: E731
        share = lambda v: f"{100 * v:.0f}%"  # noqa: E731
        flag = " (biased)" if split in found["biased"] else ""
        lines.append(
            f"| {split} | {len(bad['empty_prompt'])} / {len(bad['empty_chosen'])} / "
            f"{len(bad['empty_rejected'])} | {len(bad['chosen_is_rejected'])} "
            f"| {tokens(x['chosen'])} | {tokens(x['rejected'])} | {share(x['chosen_longer'])} / "
            f"{share(x['chosen_shorter'])} / {share(x['ties'])} | "
            f"{share(x['longer_wins'])}{flag} |"
        )
    examples = [
        {"split": s, **e} for s, bad in found["degenerate"].items() for e in bad["examples"]
    ]
    return [*lines, "", *_table(examples, ["split", "row", "prompt", "pair"])]


def _table(rows: list[dict[str, Any]], keys: list[str]) -> list[str]:
    if not rows:
        return ["(none)", ""]
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    head = [f"| {' | '.join(keys)} |", f"|{'---|' * len(keys)}"]
    return [*head, *(f"| {' | '.join(cell(r.get(k, '')) for k in keys)} |" for r in rows), ""]


def _section(title: str, per_split: dict[str, Any], keys: list[str]) -> list[str]:
    lines = [f"## {title}", ""]
    for split, found in per_split.items():
        lines += [f"**{split}**: {found['count']:,}", "", *_table(found["examples"], keys)]
    return lines


def _length_rows(result: dict[str, Any]) -> list[str]:
    lines = [
        "| split | classes | smallest | largest | ratio | tokens p50/p95/max | cut by max_length |",
        "|---|---|---|---|---|---|---|",
    ]
    for split, length in result["details"]["lengths"].items():
        bal = result["details"]["balance"][split] or {}
        small, large = bal.get("smallest", ["-", ""]), bal.get("largest", ["-", ""])
        cut = len(length["cut"]) + len(length["no_room"])
        tokens = f"{length['p50']}/{length['p95']}/{length['max']}"
        lines.append(
            f"| {split} | {bal.get('classes', '-')} | {small[0]} ({small[1]}) "
            f"| {large[0]} ({large[1]}) | {bal.get('imbalance_ratio', '-')} | {tokens} "
            f"| {cut:,} ({100 * length['share_cut']:.1f}%) |"
        )
    return lines


def _balance_and_lengths(result: dict[str, Any]) -> list[str]:
    lines = ["## Class balance and lengths", "", *_length_rows(result), ""]
    if result["kind"] == "preference":
        lines += [
            "Preference pairs: tokens are the prompt's; `cut` counts prompts that leave no room "
            "for a response plus pairs whose longer response is cut short.",
            "",
        ]
    if result["kind"] == "instruction":
        responses = result["details"]["responses"]
        empty = sum(map(len, responses["empty"].values()))
        templated = sum(map(len, responses["templated"].values()))
        lines += [
            "Instruction data: tokens are the prompt's; `cut` counts prompts that leave no room "
            "for the response plus responses cut short.",
            "",
            f"Empty responses: {empty:,}; templated responses (one text for many prompts): "
            f"{templated:,}",
            "",
            *_table(responses["templates"], ["response", "prompts"]),
        ]
    return lines


def _head(result: dict[str, Any]) -> list[str]:
    from tunelab.tracking.run_info import model_name

    keys = (*COUNTS, *MORE, *(["degenerate_pairs"] if "degenerate_pairs" in result else []))
    counts = [{"finding": k, "count": result[k]} for k in keys]
    return [
        f"# Data audit: {result['data']}",
        "",
        f"Model `{model_name(result['model'])}`, max_length {result['max_length']}. Rows are "
        "positions in each split as the run sees it (after carving and subsampling).",
        "",
        *_table(counts, ["finding", "count"]),
        f"Label issues: {len(result['label_issues']):,} ({result['details']['label_model']}).",
        "",
    ]


def _conflicts(conflicts: dict[str, Any]) -> list[str]:
    lines = [
        "## Conflicts (same text, different labels or responses)",
        "",
        f"{conflicts['count']:,} texts ({conflicts['rows']:,} rows)",
        "",
    ]
    for group in conflicts["examples"]:
        labels = "; ".join(f"{r['split']} row {r['row']}: {r['label']}" for r in group["rows"])
        lines.append(f"- {group['text']!r}: {labels}")
    return [*lines, ""]


def markdown(result: dict[str, Any], plots: list[str]) -> str:
    """The report as Markdown: counts, examples of each finding, label suspects, plots."""
    details = result["details"]
    pair_keys = ["row", "text", "same_as_row", "same_as", "similarity"]
    leak_keys = ["row", "text", "train_rows", "train_text"]
    lines = _head(result)
    lines += _section(
        "Exact duplicates (same text, same label)", details["exact_duplicates"], pair_keys
    )
    lines += _section("Near duplicates", details["near_duplicates"], pair_keys)
    lines += _section("Leaks: validation/test rows also in train", details["leaks"], leak_keys)
    lines += _conflicts(details["conflicts"])
    lines += ["## Suspected label errors (train)", ""]
    lines += _table(result["label_issues"][:20], ["row", "text", "given", "suggested", "quality"])
    lines += _section("Short texts", details["short_texts"], ["row", "text"])
    lines += _balance_and_lengths(result)
    if "pairs" in details:
        lines += _pairs_section(result)
    lines += ["## Train rows each cleaning setting removes", ""]
    lines += [f"- `data.drop_{k}=true`: {len(v):,}" for k, v in result["remove"].items()]
    lines += ["", *(f"![{p}]({p})" for p in plots), ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], folder: Path) -> list[str]:
    """`lengths.png` (token histograms against max_length) and `balance.png` (train classes)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for split, length in result["details"]["lengths"].items():
        hist = length.get("total", length)["hist"]
        ax.stairs(hist["counts"], hist["edges"], label=split)
    ax.axvline(result["max_length"], color="red", linestyle="--", label="max_length")
    ax.set(
        xlabel="tokens" if result["kind"] == "classification" else "prompt + response tokens",
        ylabel="rows",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "lengths.png", dpi=100)
    plt.close(fig)
    names = ["lengths.png"]
    balance = result["details"]["balance"].get("train")
    if balance:
        counts = sorted(balance["counts"].values())
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.bar(range(len(counts)), counts)
        ax.set(
            xlabel="class (sorted by size)",
            ylabel="train rows",
            title=f"{len(counts)} classes, ratio {balance['imbalance_ratio']}",
        )
        fig.tight_layout()
        fig.savefig(folder / "balance.png", dpi=100)
        plt.close(fig)
        names.append("balance.png")
    return names


def write(result: dict[str, Any], folder: Path) -> Path:
    """Write `audit.json`, the plots and `audit.md` into `folder`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "audit.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    plots = plot(result, folder)
    (folder / "audit.md").write_text(markdown(result, plots))
    return folder
