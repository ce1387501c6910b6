"""export.py format=hf quantize=int8: torchao int8 weight-only Linear layers for encoders and
the tiny decoder, checked against the fp32 model at export time, loaded by predict.py and by
the logged MLflow Model; a clear error where torchao is missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_export import exported, intent_texts, predict_file, quickstart_run  # noqa: F401
from test_export_decoder import decoder_run  # noqa: F401

pytest.importorskip("torchao")


def _int8_linears(folder: Path) -> tuple[int, int]:
    """(int8 Linear weights, all Linear layers) of the model predict.py loads from `folder`."""
    import torch

    from tunelab.serving.inference import Predictor

    linears = [m for m in Predictor(folder).model.modules() if isinstance(m, torch.nn.Linear)]
    quantized = [m for m in linears if "Int8" in type(m.weight).__name__]
    return len(quantized), len(linears)


def test_encoder_int8_predicts_like_the_pytorch_model(quickstart_run, intent_data, capsys):  # noqa: F811
    folder, run_dir, run_id = quickstart_run
    outputs = {}
    for quantize in ("none", "int8"):
        code, out, err = exported(
            folder, capsys, f"source={run_dir}", "format=hf", f"quantize={quantize}"
        )
        outputs[quantize] = run_dir / "exports" / f"hf_{quantize}"
        assert code == 0 and out.strip().splitlines()[-1] == str(outputs[quantize]), err
    int8 = outputs["int8"]
    info = json.loads((int8 / "model_info.json").read_text())
    assert (info["format"], info["quantize"], info["runtime"]) == ("hf", "int8", "pytorch")
    assert info["check"]["agreement"] >= 0.99 and info["check"]["max_difference"] <= 0.1
    assert "torchao" in info["requirements"]
    config = json.loads((int8 / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "torchao"
    quantized, linears = _int8_linears(int8)
    assert quantized == linears > 0  # attention, FFN, pooler and classifier
    size = lambda f: (f / "model.safetensors").stat().st_size  # noqa: E731
    assert size(int8) < size(outputs["none"])
    texts = intent_texts(intent_data)
    pytorch = predict_file(str(run_dir / "export"), texts, folder)
    got = predict_file(str(int8), texts, folder)
    same = sum(a["label"] == b["label"] for a, b in zip(got, pytorch, strict=True))
    assert same / len(texts) >= 0.99
    for a, b in zip(got, pytorch, strict=True):
        assert float(a["probability"]) == pytest.approx(float(b["probability"]), abs=0.1)
    store = f"sqlite:///{folder}/mlflow.db"  # the logged MLflow Model (what `serve` loads)
    logged = predict_file(f"runs:/{run_id}/model_hf_int8", texts, folder, store)
    assert [r["label"] for r in logged] == [r["label"] for r in got]


@pytest.mark.slow
def test_decoder_int8_generates_like_the_hf_model(decoder_run, capsys):  # noqa: F811
    """Greedy generations on the run's test prompts, against the fp32 model's.

    On the hidden-64 random-init decoder near-tied logits flip a token on one of the 4 prompts
    (3 of 4 matched when measured, like GGUF q8_0): the default 99% refuses it, naming the
    agreement; accepted explicitly, the export records the check and serves.
    """
    folder, run_dir = decoder_run
    args = [f"source={run_dir}", "format=hf", "quantize=int8", "log_model=false"]
    code, _, err = exported(folder, capsys, *args, "output=strict")
    assert code == 0 or ("predicts unlike" in err and not (folder / "strict").exists()), err
    code, out, err = exported(folder, capsys, *args, "min_agreement=0.5")
    assert code == 0, err
    int8 = Path(out.strip().splitlines()[-1])
    check = json.loads((int8 / "model_info.json").read_text())["check"]
    assert check["rows"] == 4 and check["agreement"] >= 0.5
    quantized, linears = _int8_linears(int8)
    assert quantized >= linears - 1 > 0  # every Linear (a tied lm_head may stay fp32)
    from tunelab.serving.predict import load_predictor

    rows = [{"instruction": "What is diabetes ?", "input": "about the liver"}]
    [generated] = load_predictor(str(int8), None).predict(rows, max_new_tokens=12)
    assert generated["generation"]


def test_int8_without_torchao_is_a_clear_error(quickstart_run, capsys, monkeypatch):  # noqa: F811
    folder, run_dir, _ = quickstart_run
    monkeypatch.setitem(sys.modules, "torchao", None)  # as if it were not installed
    code, _, err = exported(
        folder, capsys, f"source={run_dir}", "format=hf", "quantize=int8", "output=no_torchao"
    )
    assert code == 1 and "torchao, which is not installed" in err and "Traceback" not in err
    assert not (folder / "no_torchao").exists()
