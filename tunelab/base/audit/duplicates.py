"""Exact and near duplicates within a split, leaks across splits, and label conflicts.

Texts are compared after `table.normalise`. Near duplicates are found with MinHash/LSH
(datasketch) on character shingles; every candidate the index returns is confirmed with the
exact Jaccard similarity of the two shingle sets, so the threshold means what it says.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from tunelab.base.audit.config import AuditConfig
from tunelab.base.audit.table import View, normalise

Pair = tuple[int, int, float]  # (row, the earlier or train row it matches, Jaccard similarity)


@dataclass
class Matches:
    """What the comparison found; row numbers are positions in each split.

    Attributes:
        exact: per split, (row, earlier row) pairs with the same text and the same label.
        near: per split, (row, earlier row, similarity) pairs of different but similar texts.
        leaks: per validation/test split, {row: train rows with the same or a near text}.
        conflicts: per text with more than one label, its rows as (split, row, label).
    """

    exact: dict[str, list[Pair]] = field(default_factory=dict)
    near: dict[str, list[Pair]] = field(default_factory=dict)
    leaks: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    conflicts: list[list[tuple[str, int, str]]] = field(default_factory=list)


def shingles(text: str, size: int) -> set[str]:
    """The character `size`-grams of the normalised text (the whole text when shorter)."""
    norm = normalise(text)
    return {norm[i : i + size] for i in range(max(1, len(norm) - size + 1))}


def jaccard(a: set[str], b: set[str]) -> float:
    """|a & b| / |a | b|."""
    return len(a & b) / max(1, len(a | b))


def exact_duplicates(texts: list[str], labels: list[str]) -> list[Pair]:
    """(row, first row) for every later copy of the same normalised text with the same label."""
    first: dict[tuple[str, str], int] = {}
    pairs = []
    for i, key in enumerate(zip(map(normalise, texts), labels, strict=True)):
        if key in first:
            pairs.append((i, first[key], 1.0))
        else:
            first[key] = i
    return pairs


def exact_leaks(view: View) -> dict[str, dict[int, list[int]]]:
    """Per validation/test split, its rows whose normalised text is also a train text."""
    train: dict[str, list[int]] = defaultdict(list)
    for j, text in enumerate(view.splits["train"].texts):
        train[normalise(text)].append(j)
    leaks = {}
    for split in view.eval_splits():
        texts = map(normalise, view.splits[split].texts)
        leaks[split] = {i: train[t] for i, t in enumerate(texts) if t in train}
    return leaks


def conflicts(view: View) -> list[list[tuple[str, int, str]]]:
    """The rows of every normalised text that carries more than one label, over all splits."""
    groups: dict[str, list[tuple[str, int, str]]] = defaultdict(list)
    for split, rows in view.splits.items():
        for i, (text, label) in enumerate(zip(rows.texts, rows.labels, strict=True)):
            groups[normalise(text)].append((split, i, label))
    return [rows for rows in groups.values() if len({label for _, _, label in rows}) > 1]


class NearIndex:
    """Shingle sets and MinHashes of one split, with an LSH index over the rows inserted."""

    def __init__(self, texts: list[str], settings: AuditConfig):
        from datasketch import MinHash, MinHashLSH

        self.settings = settings
        self.sets = [shingles(t, settings.shingle_chars) for t in texts]
        self.norms = [normalise(t) for t in texts]
        encoded = ([s.encode() for s in shingle_set] for shingle_set in self.sets)
        self.hashes = MinHash.bulk(encoded, num_perm=settings.num_perm, seed=1)
        # a lower index threshold finds more candidates; each is confirmed exactly
        recall = max(0.3, settings.near_threshold - 0.1)
        self.lsh = MinHashLSH(threshold=recall, num_perm=settings.num_perm)

    def insert_all(self) -> NearIndex:
        """Index every row."""
        for i, minhash in enumerate(self.hashes):
            self.lsh.insert(i, minhash)
        return self

    def similar(self, shingle_set: set[str], minhash: object, norm: str) -> list[Pair]:
        """Indexed rows whose text differs from `norm` but is at least near_threshold similar."""
        found = []
        for j in self.lsh.query(minhash):
            if self.norms[j] != norm:
                score = jaccard(shingle_set, self.sets[j])
                if score >= self.settings.near_threshold:
                    found.append((-1, j, score))
        return found


def near_within(texts: list[str], settings: AuditConfig) -> list[Pair]:
    """(row, earlier row, similarity): each row's most similar earlier near duplicate.

    A row whose text already appeared (an exact copy) is not a near duplicate as well.
    """
    index, seen = NearIndex(texts, settings), set()
    pairs = []
    for i, minhash in enumerate(index.hashes):
        if index.norms[i] in seen:
            continue
        seen.add(index.norms[i])
        found = index.similar(index.sets[i], minhash, index.norms[i])
        if found:
            _, j, score = max(found, key=lambda pair: pair[2])
            pairs.append((i, j, score))
        index.lsh.insert(i, minhash)
    return pairs


def near_leaks(view: View, settings: AuditConfig, leaks: dict[str, dict[int, list[int]]]) -> None:
    """Add to `leaks` the validation/test rows with a near duplicate in train."""
    train = NearIndex(view.splits["train"].texts, settings).insert_all()
    for split in view.eval_splits():
        probe = NearIndex(view.splits[split].texts, settings)
        for i, minhash in enumerate(probe.hashes):
            found = train.similar(probe.sets[i], minhash, probe.norms[i])
            if found:
                leaks[split].setdefault(i, []).extend(sorted(j for _, j, _ in found))


def find(view: View, settings: AuditConfig) -> Matches:
    """Every exact and near duplicate, cross-split leak and label conflict of `view`.

    Preference pairs are duplicates when prompt, chosen and rejected match (near: the three
    together are similar); leaks compare prompts; conflicts are reversed pairs (`pairs`).
    """
    from tunelab.base.audit import pairs

    found = pairs.reversed_pairs(view) if view.kind == "preference" else conflicts(view)
    matches = Matches(leaks=exact_leaks(view), conflicts=found)
    conflicted = {(split, i) for rows in found for split, i, _ in rows}
    for split, rows in view.splits.items():
        matches.exact[split] = exact_duplicates(rows.texts, rows.targets())
        near = near_within(rows.compared(), settings)  # a reversed pair is a conflict only
        matches.near[split] = [
            (i, j, score)
            for i, j, score in near
            if (split, i) not in conflicted or (split, j) not in conflicted
        ]
    near_leaks(view, settings, matches.leaks)
    return matches
