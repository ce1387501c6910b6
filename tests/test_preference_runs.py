"""Preference runs beyond one plain fit: the methods the task refuses, an SFT reference named in
MLflow (run id, models:/name@alias), KTO with precomputed reference log-probabilities, a stopped
run resumed, DDP on CPU, and reward / decision accuracy before and after training."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import test_preference
import torch
from test_preference import logps_of, overrides

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
def test_sft_reference_named_in_mlflow_is_downloaded_and_used(tiny, logged_sft, name):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    source = logged_sft.run_id if name == "run_id" else name.format(run_id=logged_sft.run_id)
    store = f"logger.tracking_uri={logged_sft.uri}"
    _, config = load_config(overrides(tiny, f"task.reference_adapter={source}", store))
    assert config.task.tracking_uri == logged_sft.uri  # the run's store by default
    datamodule, module = build_data_and_module(config)
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
    from callbacks.reference_logps import ReferenceLogps

    kto = ("task.loss=kto", "data.unpaired=true", "data.path=kto", "data.eval_batch_size=6")
    _, config = load_config(overrides(tiny, *kto, "task.precompute_reference=true"))
    datamodule, module = build_data_and_module(config)
    plain = next(iter(datamodule.val_dataloader()))
    with torch.no_grad():  # move the policy away from its reference
        for p in (p for p in module.model.parameters() if p.requires_grad):
            p.add_(torch.randn_like(p) * 0.05)
    expected = module.task.forward(module.model, plain)
    ReferenceLogps().on_fit_start(SimpleNamespace(datamodule=datamodule), module)
    batch = next(iter(datamodule.val_dataloader()))
    assert batch["reference_logps"].shape == (12,)  # completions and their mismatched rows
    assert torch.equal(batch["input_ids"], plain["input_ids"])
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
