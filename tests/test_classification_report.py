"""The classification report: per-class scores, confused pairs, calibration, confident mistakes."""

from __future__ import annotations

import csv

import pytest
import torch

from callbacks.classification_report import ClassificationReport, confused_pairs, reliability

NAMES = ["card_lost", "refund", "top_up"]


def test_report_files_hold_what_the_predictions_say(tmp_path):
    # rows: 2 right card_lost, 1 refund predicted top_up (conf 0.9), 1 right top_up
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.05, 0.05, 0.9], [0.1, 0.2, 0.7]])
    labels = torch.tensor([0, 0, 1, 2])
    texts = ["lost card", "stolen card", "where is my refund", "add money"]
    ece = ClassificationReport(top=5).write(tmp_path, probs, labels, texts, NAMES)
    with open(tmp_path / "per_class.csv") as handle:
        rows = {r["class"]: r for r in csv.DictReader(handle)}
    assert float(rows["refund"]["recall"]) == 0.0 and int(rows["card_lost"]["support"]) == 2
    assert float(rows["top_up"]["precision"]) == pytest.approx(0.5)
    with open(tmp_path / "confused_pairs.csv") as handle:
        assert list(csv.reader(handle))[1] == ["refund", "top_up", "1"]
    mistakes = (tmp_path / "confident_mistakes.md").read_text()
    assert "| 0.900 | refund | top_up | where is my refund |" in mistakes
    assert (tmp_path / "reliability.png").exists() and (tmp_path / "confused_pairs.png").exists()
    # ECE by hand: bin 0.7 holds two right rows, bin 0.8 one right, bin 0.9 one wrong
    assert ece == pytest.approx((2 * 0.3 + 0.2 + 0.9) / 4, abs=1e-6)


def test_pairs_are_ordered_by_count_and_calibration_bins_cover_all_rows():
    probs = torch.eye(3)[[1, 1, 2, 0]] * 0.9 + 0.03
    labels = torch.tensor([0, 0, 0, 0])
    assert confused_pairs(probs, labels, NAMES, 5) == [
        ("card_lost", "refund", 2),
        ("card_lost", "top_up", 1),
    ]
    _, bins = reliability(probs, labels)
    assert sum(count for *_, count in bins) == 4
