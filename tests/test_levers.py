"""Levers: `optim.layer_decay` (lower blocks train at smaller learning rates) and `data.refit`
(the final model trains on train + validation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_overrides

import run as cli
from tunelab.run.layer_decay import decayed_groups


def test_each_depth_gets_its_decayed_lr_and_every_weight_one_group(tiny_bert: Path):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=4)
    model.bert.embeddings.requires_grad_(False)  # frozen weights are in no group
    groups = decayed_groups(model, weight_decay=0.01, lr=1.0, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    assert lr_of[id(params["classifier.weight"])] == 1.0
    assert lr_of[id(params["bert.pooler.dense.weight"])] == 1.0
    assert lr_of[id(params["bert.encoder.layer.1.output.dense.weight"])] == 0.5
    assert lr_of[id(params["bert.encoder.layer.0.output.dense.weight"])] == 0.25
    assert id(params["bert.embeddings.word_embeddings.weight"]) not in lr_of
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert id(params["bert.encoder.layer.0.output.LayerNorm.weight"]) in no_decay


def test_a_run_with_layer_decay_trains(tiny_bert: Path, intent_data: Path, workdir: Path):
    args = [*tiny_overrides(tiny_bert, intent_data), "method=full", "optim.lr=1e-3"]
    assert cli.main([*args, "optim.layer_decay=0.8", "trainer.max_epochs=1", "name=ld"]) == 0
    [run_dir] = (workdir / "outputs" / "ld").iterdir()
    assert json.loads((run_dir / "test_metrics.json").read_text())["test/loss"] > 0


@pytest.mark.parametrize("value", ["0", "1.5"])
def test_layer_decay_outside_0_1_is_refused(value: str, tiny_bert: Path, intent_data: Path):
    from tunelab.base.errors import ConfigError
    from tunelab.config.validate import load_config

    with pytest.raises(ConfigError, match=r"optim\.layer_decay"):
        load_config([*tiny_overrides(tiny_bert, intent_data), f"optim.layer_decay={value}"])


def test_refit_trains_on_train_and_validation_and_leaves_test_alone(
    tiny_bert: Path, intent_data: Path
):
    from tunelab.config.validate import load_config
    from tunelab.run.build import build_datamodule

    found = {}
    for refit in ("false", "true"):
        _, run = load_config([*tiny_overrides(tiny_bert, intent_data), f"data.refit={refit}"])
        datamodule = build_datamodule(run)
        datamodule.setup("fit")
        found[refit] = {k: list(v["input_ids"]) for k, v in datamodule.splits.items()}
    plain, refit = found["false"], found["true"]
    assert refit["train"] == plain["train"] + plain["validation"]
    assert refit["validation"] == plain["validation"] and refit["test"] == plain["test"]


def test_ema_tests_and_exports_the_averaged_weights(tiny_bert: Path, intent_data: Path, workdir):
    """The best checkpoint holds the average, and the export is what the checkpoint holds."""
    import torch

    from tunelab.run.checkpoint import load_module, read_checkpoint

    ema = "+callbacks=[{_target_: callbacks.weight_averaging.EMA, decay: 0.5}]"
    args = [*tiny_overrides(tiny_bert, intent_data), "method=full", "optim.lr=1e-3", ema]
    assert cli.main([*args, "trainer.max_epochs=2", "name=ema"]) == 0
    [run_dir] = (workdir / "outputs" / "ema").iterdir()
    [best] = (run_dir / "checkpoints").glob("best-*.ckpt")
    saved = read_checkpoint(best, "cpu")
    current, averaged = saved["current_model_state"], saved["state_dict"]
    key = "model.classifier.weight"
    assert not torch.equal(current[key], averaged[key])  # the average differs from the weights
    module = load_module(best)
    from transformers import AutoModelForSequenceClassification

    exported = AutoModelForSequenceClassification.from_pretrained(run_dir / "export")
    assert torch.equal(exported.classifier.weight, module.model.classifier.weight)
    assert torch.equal(module.model.classifier.weight, averaged[key])


def test_rdrop_adds_the_symmetric_kl_of_two_dropout_passes(tiny_bert: Path):
    import torch
    import torch.nn.functional as F
    from module_helpers import task_config
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=4)
    batch = {"input_ids": torch.randint(1000, 2000, (6, 8)), "labels": torch.arange(6) % 4}
    task = task_config(rdrop=2.0)
    model.train()
    torch.manual_seed(3)
    outputs = task.forward(model, batch)
    torch.manual_seed(3)
    a, b = model(**batch).logits, model(**batch).logits  # the same two dropout masks
    assert not torch.allclose(a, b)
    p, q = F.log_softmax(a, -1), F.log_softmax(b, -1)
    kl = (
        F.kl_div(p, q, log_target=True, reduction="batchmean")
        + F.kl_div(q, p, log_target=True, reduction="batchmean")
    ) / 2
    ce = (F.cross_entropy(a, batch["labels"]) + F.cross_entropy(b, batch["labels"])) / 2
    assert task.loss(outputs, batch).item() == pytest.approx((ce + 2.0 * kl).item(), rel=1e-5)
    model.eval()  # validation: one pass, the plain loss
    outputs = task.forward(model, batch)
    assert "rdrop_logits" not in outputs
    assert task.loss(outputs, batch).item() == pytest.approx(outputs.loss.item())


def test_pairs_are_half_same_label_and_every_row_is_paired():
    from callbacks.contrastive_warmup import draw_pairs

    labels = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    pairs = draw_pairs(labels, pairs_per_row=3, seed=0)
    assert len(pairs) == 2 * 3 * len(labels) and pairs[:, 2].sum() == 3 * len(labels)
    for first, second, same in pairs:
        assert (labels[first] == labels[second]) == bool(same)
    assert sorted(set(pairs[:, 0])) == list(range(len(labels)))


def test_contrastive_warmup_pulls_same_label_pairs_together_before_training(
    tiny_bert: Path, intent_data: Path, tmp_path: Path
):
    """The probe pairs' loss falls during the warm-up; the run then trains and tests as usual."""
    from conftest import trained

    target = "callbacks.contrastive_warmup.ContrastiveWarmup, lr: 1e-3, pairs_per_row: 4"
    warmup = "+callbacks=[{_target_: " + target + "}]"
    args = [*tiny_overrides(tiny_bert, intent_data), "method=full", "task.pooling=mean", warmup]
    run, run_dir = trained(tmp_path, [*args, "trainer.max_epochs=1"], "warm")
    start, end = (
        run.data.metrics["warmup/pair_loss_start"],
        run.data.metrics["warmup/pair_loss_end"],
    )
    assert end < 0.7 * start
    assert json.loads((run_dir / "test_metrics.json").read_text())["test/loss"] > 0
