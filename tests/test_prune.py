"""method=prune: real smaller matrices chosen on training batches; the export is an ordinary
Hugging Face model that `from_pretrained` loads and that computes what the pruned model did."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import INTENTS, tiny_overrides
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import run as cli
from modules.prune import PruneMethod, measure
from tasks.sequence_classification import SequenceClassification

TEXTS = [phrase for phrases in INTENTS.values() for phrase in phrases]


class Batches:
    """The part of a datamodule `prepare` reads: training batches."""

    def __init__(self, folder: Path):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        self.batches = [
            tokenizer(TEXTS[i : i + 4], padding=True, return_tensors="pt") for i in (0, 4, 8)
        ]

    def train_dataloader(self) -> list[dict]:
        return [
            dict(b) | {"labels": torch.zeros(len(b["input_ids"]), dtype=torch.long)}
            for b in self.batches
        ]


def classifier(folder: Path):
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=4)


def test_pruned_model_saves_smaller_and_loads_with_the_same_outputs(tiny_bert, tmp_path):
    task = SequenceClassification(
        _target_="tasks.sequence_classification.SequenceClassification", name="t"
    )
    method = PruneMethod(
        _target_="modules.prune.PruneMethod",
        name="prune",
        ffn_fraction=0.5,
        drop_layers=1,
        batches=2,
    )
    data = Batches(tiny_bert)
    model = classifier(tiny_bert)
    before = sum(p.numel() for p in model.parameters())
    scores, change = measure(model, data.train_dataloader()[:2])
    kept_block = max(range(2), key=lambda i: change[i])
    best = torch.topk(scores[kept_block], 32).indices.sort().values
    expected_rows = (
        model.bert.encoder.layer[kept_block].intermediate.dense.weight[best].detach().clone()
    )
    pruned = method.prepare(model, data, task).eval()
    [block] = pruned.bert.encoder.layer  # one block left, the one that changes the most
    assert block.intermediate.dense.weight.shape == (32, 32)  # 64 neurons -> 32, real matrices
    assert block.output.dense.weight.shape == (32, 32)
    assert torch.equal(block.intermediate.dense.weight, expected_rows)  # the highest scores kept
    pruned.save_pretrained(tmp_path / "pruned")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pruned").eval()
    assert sum(p.numel() for p in loaded.parameters()) < before
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert (config["intermediate_size"], config["num_hidden_layers"]) == (32, 1)
    batch = data.batches[2]
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, pruned(**batch).logits)


def test_a_prune_run_exports_an_ordinary_smaller_model(
    tmp_path, monkeypatch, tiny_bert, intent_data
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["method=prune", "method.ffn_fraction=0.25", "method.batches=2", "name=pruned"]
    assert cli.main([*args, *tiny_overrides(tiny_bert, intent_data)]) == 0
    [export] = (tmp_path / "outputs" / "pruned").glob("*/export")
    model = AutoModelForSequenceClassification.from_pretrained(export)
    assert model.config.intermediate_size == 48
    assert model.bert.encoder.layer[0].intermediate.dense.weight.shape == (48, 32)
    from conftest import runs

    [run] = runs(tmp_path)  # counted after pruning: the pruned model's own size
    size = sum(p.numel() for p in model.parameters())
    assert (
        f"{size:,} trainable params (100.00% of {size:,})" in run.data.tags["mlflow.note.content"]
    )
    from tunelab.serving.predict import load_predictor

    [row] = load_predictor(str(export), None).predict([{"text": "refund status"}])
    assert row["label"] in INTENTS


def test_prune_refuses_to_remove_every_block(tiny_bert, intent_data, capsys):
    args = ["method=prune", "method.drop_layers=2", *tiny_overrides(tiny_bert, intent_data)]
    assert cli.main(args) != 0
    err = capsys.readouterr().err
    assert "method.drop_layers: 2 would remove every one of the 2 blocks" in err
