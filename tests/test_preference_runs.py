"""Preference runs beyond one plain fit: the methods the task refuses, an SFT reference named in
MLflow (run id, models:/name@alias), KTO with precomputed reference log-probabilities, a stopped
run resumed, DDP on CPU, and reward / decision accuracy before and after training."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import test_preference
import torch
from test_preference import logps_of, overrides, with_precomputed_reference

from tunelab.base.errors import ConfigError
from tunelab.config.validate import load_config
from tunelab.run.build import build_data_and_module

pytestmark = pytest.mark.usefixtures("one_torch_thread")
tiny = test_preference.tiny  # the fixture: (tiny Mistral folder, data root)


# ----------------------------------------------------------------------------- the gate
@pytest.mark.parametrize(
    ("method", "why"),
    [
        (["method=distill", "method.teacher=/nowhere"], "brings its own training loss"),
        (["method=prune"], "replaces or reshapes the model before training"),
    ],
)
def test_methods_the_task_cannot_train_with_are_refused_at_the_gate(tiny, method, why):
    with pytest.raises(ConfigError) as caught:
        load_config(overrides(tiny, *method, "~method.r", "~method.alpha"))
    [problem] = [p for p in caught.value.problems if p.startswith("method=")]
    assert why in problem and f"{method[0]}: task=preference cannot train with it" in problem
    fits = problem.split("pick method=")[1].split("|")
    assert "lora" in fits and "full" in fits and "distill" not in fits and "prune" not in fits


# ----------------------------------------------------------------------------- MLflow reference
@pytest.fixture(scope="module")
def logged_sft(tiny, tmp_path_factory) -> SimpleNamespace:
    """An SFT LoRA adapter (moved off zero) logged as a tunelab MLflow Model and registered."""
    from tunelab.serving.inference import model_info, write_info
    from tunelab.serving.mlflow_model import log_model, register

    folder = tmp_path_factory.mktemp("logged_sft")
    _, config = load_config(sft_args(tiny))
    _, module = build_data_and_module(config)
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.5)
    export = folder / "export"
    module.model.save_pretrained(export)
    write_info(export, model_info(config, None))
    uri = f"sqlite:///{folder}/mlflow.db"
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("sft")).info.run_id
    log_model(uri, run_id, export, [])
    register(uri, run_id, "tiny-sft", alias="champion")
    return SimpleNamespace(export=export, uri=uri, run_id=run_id)


def sft_args(tiny) -> list[str]:
    from decoder_helpers import decoder_overrides

    model, root = tiny
    return ["experiment=lora_tiny_mistral", *decoder_overrides(model, root)]


@pytest.mark.parametrize("name", ["run_id", "runs:/{run_id}/model", "models:/tiny-sft@champion"])
def test_sft_reference_named_in_mlflow_is_downloaded_and_used(tmp_path, tiny, logged_sft, name):
    import mlflow
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    source = logged_sft.run_id if name == "run_id" else name.format(run_id=logged_sft.run_id)
    store = f"logger.tracking_uri={logged_sft.uri}"
    _, config = load_config(overrides(tiny, f"task.reference_adapter={source}", store))
    assert config.task.tracking_uri == logged_sft.uri  # the run's store by default
    elsewhere = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/other.db")  # as a run's own store would be
    try:
        datamodule, module = build_data_and_module(config)
    finally:
        mlflow.set_tracking_uri(elsewhere)
    batch = next(iter(datamodule.val_dataloader()))
    with module.task.reference(module.model) as reference:
        found = logps_of(reference, batch)
    base_model = AutoModelForCausalLM.from_pretrained(tiny[0])
    sft = PeftModel.from_pretrained(base_model, logged_sft.export)
    assert torch.allclose(found, logps_of(sft, batch), atol=1e-4)
    base = logps_of(AutoModelForCausalLM.from_pretrained(tiny[0]), batch)
    assert (found - base).abs().max() > 1e-2  # the SFT adapter, not the base
    loss = module.task.forward(module.model, batch).loss.item()
    assert loss == pytest.approx(math.log(2), abs=1e-5)  # the policy starts as the SFT model


def test_sft_reference_missing_from_mlflow_is_a_config_error(tiny, logged_sft):
    args = overrides(tiny, "task.reference_adapter=models:/tiny-sft@nowhere")
    from tunelab.config.preflight import preflight

    _, config = load_config([*args, f"logger.tracking_uri={logged_sft.uri}"])
    with pytest.raises(ConfigError) as caught:
        preflight(config)
    [problem] = caught.value.problems
    assert "task.reference_adapter=models:/tiny-sft@nowhere was not found" in problem
    assert "Fix: check the run id or the model's name and alias" in problem


# ----------------------------------------------------------------------------- KTO precomputed
def test_kto_precomputed_reference_logps_give_the_same_loss(tiny):
    kto = ("task.loss=kto", "data.unpaired=true", "data.path=kto", "data.eval_batch_size=6")
    args = overrides(tiny, *kto, "task.precompute_reference=true")
    module, expected, batch = with_precomputed_reference(args)
    assert batch["reference_logps"].shape == (12,)  # completions and their mismatched rows
    found = module.task.forward(module.model, batch)
    assert found.loss.item() == pytest.approx(expected.loss.item(), abs=1e-5)
    assert found.loss.item() != pytest.approx(0.5, abs=1e-4)  # 0.5: the policy unmoved


def test_precompute_without_a_reference_is_refused(tiny):
    with pytest.raises(ConfigError) as caught:
        load_config(overrides(tiny, "task.loss=orpo", "task.precompute_reference=true"))
    assert any(
        p.startswith("task.precompute_reference: task.loss=orpo uses no reference")
        for p in caught.value.problems
    )


# ----------------------------------------------------------------------------- before / after
@pytest.mark.parametrize("start", ["base", "sft"])
def test_before_and_after_metrics_land_in_the_same_run(tmp_path, tiny, logged_sft, start):
    """DPO on PubMedQA-shaped pairs: test/before/* is the starting model (the base with a new
    adapter, or the SFT model), test/* the trained one (SFT -> DPO), in one MLflow run."""
    from test_decoder_eval import write_pubmedqa
    from test_preference import history, run_cli

    from callbacks.option_scoring import OptionScoring

    root = write_pubmedqa(tmp_path / "data")
    pubmedqa = ["data=pubmedqa_pairs", f"data.root={root}", "data.path=pubmedqa", "data.val_size=4"]
    sft = [
        "task.reference_adapter=models:/tiny-sft@champion",
        f"task.tracking_uri={logged_sft.uri}",
    ]
    extra = sft if start == "sft" else []
    args = [*overrides(tiny, "model.max_length=96", "trainer.max_epochs=2"), *pubmedqa, *extra]
    code, client, run = run_cli(tmp_path, args)
    assert code == 0
    metrics = run.data.metrics
    # the policy starts as its reference: loss ln 2, every reward 0, so no pair is won yet
    assert metrics["test/before/loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert metrics["test/before/rewards/accuracies"] == 0.0
    assert {"test/rewards/accuracies", "test/decision_acc", "test/before/decision_acc"} <= set(
        metrics
    )
    assert history(client, run, "test/before/decision_acc")[0] in {i / 8 for i in range(9)}
    # before = option scoring of the model as it starts: the base (a new adapter is the
    # identity at first) or the SFT model (the policy starts as a copy of its adapter)
    _, config = load_config(args)
    datamodule, module = build_data_and_module(config)
    results = OptionScoring().evaluate(module, datamodule, datamodule.data.answer_options())
    right = sum(r["gold"] == r["predicted"] for r in results) / len(results)
    assert metrics["test/before/decision_acc"] == pytest.approx(right)


def test_evaluate_before_false_logs_nothing_before(tmp_path, tiny):
    from test_preference import run_cli

    args = overrides(tiny, "task.evaluate_before=false", "trainer.max_epochs=1")
    code, _, run = run_cli(tmp_path, args)
    assert code == 0 and not [k for k in run.data.metrics if k.startswith("test/before/")]


# ----------------------------------------------------------------------------- resume
@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["task.precompute_reference=true"]])
def test_stopped_preference_run_resumes_to_the_same_losses(tmp_path, monkeypatch, tiny, extra):
    """Stopped mid-epoch (as SIGTERM stops it), then rerun: every step's train/loss matches."""
    from test_preference import run_cli
    from test_resume import stop_at

    from tunelab.run import resume

    args = overrides(tiny, "trainer.max_epochs=2", "trainer.checkpoint_every_n_steps=2", *extra)
    (tmp_path / "once").mkdir()
    (tmp_path / "twice").mkdir()
    code, client, clean = run_cli(tmp_path / "once", args)
    assert code == 0
    with monkeypatch.context() as patch:
        stop_at(patch, 8)  # 48 pairs / 8: mid second epoch
        code, _, killed = run_cli(tmp_path / "twice", args)
    assert code == 143 and killed.info.status == "KILLED"
    code, again, resumed = run_cli(tmp_path / "twice", args)
    assert code == 0 and resumed.info.run_id == killed.info.run_id
    [folder] = (tmp_path / "twice" / "outputs" / "dpo_tiny_mistral_pairs").iterdir()
    assert resume.read_state(folder)["status"] == "finished"
    for key in ("train/loss", "train/rewards/margins", "val/rewards/accuracies", "val/loss"):
        want = per_step(client, clean.info.run_id, key)
        have = per_step(again, resumed.info.run_id, key)
        assert sorted(have) == sorted(want), key
        for step, values in have.items():
            assert values == pytest.approx([want[step][0]] * len(values), abs=1e-6), (key, step)
    before = [k for k in resumed.data.metrics if k.startswith("test/before/")]
    assert before and all(
        len(again.get_metric_history(resumed.info.run_id, k)) == 1 for k in before
    )  # the starting model's metrics, logged once: not again by the resumed fit


def per_step(client: Any, run_id: str, key: str) -> dict[int, list[float]]:
    steps: dict[int, list[float]] = {}
    for metric in client.get_metric_history(run_id, key):
        steps.setdefault(metric.step, []).append(metric.value)
    return steps


# ----------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_dpo_under_ddp_on_two_cpu_processes_matches_one_process(tmp_path, tiny):
    """gloo, 2 processes with 4 pairs each against 1 process with 8: the same losses."""
    from mlflow import MlflowClient
    from test_distributed import LOSS_TOLERANCE
    from test_distributed import run_cli as run_process

    common = [*overrides(tiny, "trainer.max_epochs=1", "data.group_by_length=false")]
    common += ["trainer.accelerator=cpu", "export.save_model=false"]
    one = [*common, "data.batch_size=8", "logger.tracking_uri=sqlite:///one.db"]
    two = [*common, "data.batch_size=4", "trainer.strategy=ddp", "trainer.devices=2"]
    run_process(one, tmp_path)
    out = run_process([*two, "logger.tracking_uri=sqlite:///two.db"], tmp_path)
    assert out.stdout.count("MLflow run id") == 1
    found = {}
    for db in ("one", "two"):
        client = MlflowClient(f"sqlite:///{tmp_path}/{db}.db")
        [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert run.info.status == "FINISHED"
        found[db] = {
            k: [
                m.value
                for m in sorted(
                    client.get_metric_history(run.info.run_id, k),
                    key=lambda m: (m.step, m.timestamp),
                )
            ]
            for k in ("train/loss", "val/loss", "val/rewards/accuracies", "test/before/loss")
        }
    assert len(found["one"]["train/loss"]) == 6  # 48 pairs / 8
    assert found["one"]["train/loss"][0] == pytest.approx(math.log(2), abs=1e-5)
    for key, values in found["one"].items():
        assert found["two"][key] == pytest.approx(values, abs=LOSS_TOLERANCE), key


# ----------------------------------------------------------------------------- quantised base
@pytest.mark.slow
def test_dpo_on_an_nf4_base_starts_at_ln2_and_trains_its_adapter(tmp_path, tiny):
    """QLoRA-style DPO: the base in 4-bit (bitsandbytes' CPU backend), the LoRA adapter trains,
    and the reference is the same quantised model with the adapter disabled."""
    from test_preference import history, run_cli

    args = overrides(tiny, "model.quantize=nf4", "model.dtype=float32", "trainer.max_epochs=2")
    code, client, run = run_cli(tmp_path, args)
    assert code == 0
    losses = history(client, run, "train/loss")
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)  # policy = reference at step 0
    margins = history(client, run, "train/rewards/margins")
    assert any(m != 0.0 for m in margins[1:])  # the adapter moved the policy off the reference
    assert run.data.params.get("model.quantize") == "nf4"
