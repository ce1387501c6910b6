"""Decoders: GGUF through llama.cpp (checked by greedy decoding against the HF model), a clear
`error:` where llama.cpp is missing, and what vLLM would refuse in an adapter export."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from decoder_helpers import build_tiny, decoder_overrides, write_qa

import export as export_cli
import run as cli
from tunelab.export.vllm import vllm_problems

# llama.cpp's source for its converter: a llama-cpp-python sdist or a llama.cpp checkout
# (pip download --no-binary :all: --no-deps llama-cpp-python -d <dir>)
SOURCE = os.environ.get("LLAMA_CPP_SOURCE", "")


def adapter(folder: Path, **config) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    saved = {"peft_type": "LORA", "r": 8, "target_modules": ["q_proj", "v_proj"]} | config
    (folder / "adapter_config.json").write_text(json.dumps(saved))
    return folder


def test_vllm_check_names_what_vllm_would_refuse(tmp_path):
    assert vllm_problems(adapter(tmp_path / "fine")) == []
    assert vllm_problems(tmp_path) == []  # a whole model: nothing to check
    found = vllm_problems(
        adapter(tmp_path / "bad", r=64, modules_to_save=["lm_head"], target_modules="all-linear")
    )
    assert any("rank 64 > 16: start vLLM with --max-lora-rank 64" in p for p in found)
    assert any("modules_to_save ['lm_head']" in p for p in found)
    found = vllm_problems(adapter(tmp_path / "emb", target_modules=["embed_tokens", "q_proj"]))
    assert found == ["target_modules ['embed_tokens']: vLLM applies LoRA to linear layers only"]
    assert vllm_problems(adapter(tmp_path / "ia3", peft_type="IA3")) == [
        "vLLM serves LoRA adapters only, not IA3"
    ]


@pytest.fixture(scope="module")
def decoder_run(tmp_path_factory, one_torch_thread):
    """A LoRA run on a tiny Mistral: (work folder, run folder)."""
    folder = tmp_path_factory.mktemp("decoder")
    model, data = build_tiny(folder / "mistral"), write_qa(folder / "data")
    args = [
        "experiment=lora_tiny_mistral",
        *decoder_overrides(model, data),
        "trainer.max_epochs=10",
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert cli.main(args) == 0
    [run_dir] = (folder / "outputs" / "lora_tiny_mistral_qa").iterdir()
    return folder, run_dir


def test_gguf_without_llama_cpp_source_is_a_clear_error(decoder_run, capsys):
    _folder, run_dir = decoder_run
    args = [f"source={run_dir}", "format=gguf", "quantize=q8_0", "llama_cpp=/nowhere"]
    assert export_cli.main(args) == 1
    err = capsys.readouterr().err
    assert "error: " in err and "Traceback" not in err
    assert "llama-cpp-python" in err  # what is missing and how to get it
    assert not (run_dir / "exports" / "gguf_q8_0").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("quantize", "tolerance"),
    # f32 must generate exactly what the HF model does; the quantised files are checked and
    # recorded (on the hidden-64 random-init decoder, near-tied logits flip some tokens: q8_0
    # matched 3 of 4 prompts, q4_k_m 2 of 4 when measured)
    [("none", []), ("q8_0", ["min_agreement=0"]), ("q4_k_m", ["min_agreement=0"])],
)
def test_gguf_export_generates_like_the_hf_model(decoder_run, quantize, tolerance, capsys):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install it)")
    if not SOURCE:
        pytest.skip("set LLAMA_CPP_SOURCE to a llama-cpp-python sdist or a llama.cpp checkout")
    folder, run_dir = decoder_run
    args = [f"source={run_dir}", "format=gguf", f"quantize={quantize}", f"llama_cpp={SOURCE}"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        assert export_cli.main([*args, *tolerance]) == 0, capsys.readouterr().err
    out = run_dir / "exports" / f"gguf_{quantize}"
    info = json.loads((out / "model_info.json").read_text())
    assert (info["format"], info["runtime"], info["quantize"]) == ("gguf", "llama.cpp", quantize)
    assert info["check"]["rows"] == 4
    if quantize == "none":
        assert info["check"]["agreement"] == 1.0
        from tunelab.serving.predict import load_predictor

        rows = [{"instruction": "What is diabetes ?", "input": "about the liver"}]
        hf = load_predictor(str(run_dir / "export"), None).predict(rows, max_new_tokens=12)
        assert load_predictor(str(out), None).predict(rows, max_new_tokens=12) == hf
