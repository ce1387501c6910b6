"""Decoders end to end through `run.py`: a tiny Mistral fits 16 QA rows under LoRA and QLoRA
(real bitsandbytes 4-bit layers), generations and the mask preview reach MLflow, and the merged
export generates exactly like base + adapter."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_bert, tiny_overrides
from decoder_helpers import build_tiny, decoder_overrides, write_qa
from mlflow import MlflowClient
from module_helpers import make_module, quantized_layers

import run as cli

PROMPTS = ["What is gout ?", "How to treat migraine ?\n\nabout the heart"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tiny Mistral folder, data root with qa/{train,validation,test}.jsonl)."""
    root = tmp_path_factory.mktemp("decoder")
    return build_tiny(root / "mistral"), write_qa(root)


def _run(folder: Path, args: list[str]) -> tuple[MlflowClient, object, Path]:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert cli.main(args) == 0
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    [run_dir] = (folder / "outputs").glob("*/*")
    return client, run, run_dir


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny):
    model, data = tiny
    args = ["experiment=lora_tiny_mistral", *decoder_overrides(model, data, "optim.lr=1e-2")]
    return _run(tmp_path_factory.mktemp("lora"), [*args, "trainer.max_epochs=20"])


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory, tiny):
    model, data = tiny
    args = ["experiment=qlora_tiny_mistral", *decoder_overrides(model, data, "optim.lr=1e-2")]
    return _run(tmp_path_factory.mktemp("qlora"), [*args, "trainer.max_epochs=20"])


def _loss_halves(client: MlflowClient, run) -> None:
    """Over 20 epochs of 2 steps, the last epoch's mean training loss is under half the first's."""
    history = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert len(history) == 40 and sum(history[-2:]) < 0.5 * sum(history[:2]), history


def test_lora_fits_and_logs_generations_and_mask_preview(lora_run):
    client, run, run_dir = lora_run
    _loss_halves(client, run)
    metrics = run.data.metrics
    assert {"val/loss", "val/ppl", "test/loss", "test/ppl"} <= set(metrics)
    assert metrics["val/ppl"] == pytest.approx(math.exp(metrics["val/loss"]), rel=0.2)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"merged_model", "generations", "mask_preview.txt"} <= artifacts
    [output] = run.outputs.model_outputs  # the adapter export, logged as the MLflow Model `model`
    assert client.get_logged_model(output.model_id).name == "model"
    tables = [a.path for a in client.list_artifacts(run.info.run_id, "generations")]
    assert len(tables) == 2  # validation every 10 of 20 epochs
    table = json.loads((run_dir / "generations" / Path(tables[-1]).name).read_text())
    assert len(table["generated"]) == 3 and table["prompt"][0].startswith("<s>[INST]")
    preview = (run_dir / "mask_preview.txt").read_text()
    assert "[/INST]« " in preview and "</s>»" in preview and "«<s>" not in preview


def _greedy(model: torch.nn.Module, tokenizer, text: str) -> list[int]:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
    with torch.no_grad():
        out = model.eval().generate(input_ids=ids, max_new_tokens=12, do_sample=False)
    return out[0, ids.shape[1] :].tolist()


def _assert_merged_matches(run_dir: Path, base: torch.nn.Module) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = AutoModelForCausalLM.from_pretrained(run_dir / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    adapted = PeftModel.from_pretrained(base, run_dir / "export")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "merged")
    for text in PROMPTS:
        assert _greedy(merged, tokenizer, text) == _greedy(adapted, tokenizer, text)


def test_merged_lora_export_generates_like_base_plus_adapter(lora_run, tiny):
    from transformers import AutoModelForCausalLM

    _assert_merged_matches(lora_run[2], AutoModelForCausalLM.from_pretrained(tiny[0]))


def test_qlora_module_really_holds_4bit_layers(tiny):
    model = {"name_or_path": str(tiny[0]), "task": "causal_lm", "max_length": 64}
    module = make_module("lora", model | {"quantize": "nf4"})
    import bitsandbytes as bnb  # after the module: a plain run blocks it first

    assert quantized_layers(module.model) == 14  # 7 linear layers x 2 decoder layers
    q_proj = module.model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit)
    assert q_proj.base_layer.weight.quant_state.quant_type == "nf4"
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)


def test_qlora_fits_and_merges_into_the_dequantised_base(qlora_run, tiny):
    from transformers import AutoModelForCausalLM

    from tunelab.base.models import keep_training_layout, quantization_config
    from tunelab.base.schema import ModelConfig

    client, run, run_dir = qlora_run
    _loss_halves(client, run)
    config = json.loads((run_dir / "merged" / "config.json").read_text())
    assert "quantization_config" not in config
    model = ModelConfig(name_or_path=str(tiny[0]), quantize="nf4")
    base = AutoModelForCausalLM.from_pretrained(
        tiny[0], quantization_config=quantization_config(model)
    )
    assert quantized_layers(base) == 14
    keep_training_layout(base)  # fp32 dequantised matmuls, as in the merged model (no bf16 repack)
    _assert_merged_matches(run_dir, base)


@pytest.fixture(scope="module")
def bert64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer hidden-64 BERT: bitsandbytes' CPU 4-bit kernels need in_features >= 64."""
    folder = tmp_path_factory.mktemp("bert64")
    return build_tiny_bert(folder, hidden_size=64, intermediate_size=128)


def test_qlora_trains_an_encoder_classifier_head(workdir, bert64, intent_data):
    args = ["experiment=quickstart", *tiny_overrides(bert64, intent_data), "model.quantize=nf4"]
    args += ["trainer.max_epochs=1", "model.dtype=float32"]
    assert cli.main(args) == 0
    [run_dir] = (workdir / "outputs" / "quickstart_intents").iterdir()
    adapter = json.loads((run_dir / "export" / "adapter_config.json").read_text())
    assert "classifier" in adapter["modules_to_save"]
    [ckpt] = (run_dir / "checkpoints").glob("best-*.ckpt")  # resume.ckpt beside it
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert any("classifier" in k for k in state) and any("lora_A" in k for k in state)
