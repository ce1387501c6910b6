"""export.py: a quickstart run to ONNX int8 that predict.py, the logged MLflow Model and
`mlflow models serve` run like the PyTorch model; refusals name what is wrong."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import tiny_overrides
from mlflow import MlflowClient
from test_serving import invoke, served

import export as export_cli
import predict as predict_cli
import run as cli

LEARNS = ["trainer.max_epochs=8", "optim.lr=1e-2"]  # the tiny BERT then tells intents apart


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory, tiny_bert, intent_data, one_torch_thread):
    """A quickstart (LoRA) run on the tiny BERT: (work folder, run folder, MLflow run id)."""
    folder = tmp_path_factory.mktemp("export")
    args = ["experiment=quickstart", *tiny_overrides(tiny_bert, intent_data), *LEARNS]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert cli.main(args) == 0
    [run_dir] = (folder / "outputs" / "quickstart_intents").iterdir()
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    return folder, run_dir, run_id


@pytest.fixture(scope="module")
def onnx_int8(quickstart_run):
    """The run exported to ONNX int8; export.py's last line is the folder."""
    folder, run_dir, _ = quickstart_run
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        assert export_cli.main([f"source={run_dir}", "format=onnx", "quantize=int8"]) == 0
    return run_dir / "exports" / "onnx_int8"


def exported(folder: Path, capsys, *args: str) -> tuple[int, str, str]:
    """Run export.py in `folder`; (exit code, stdout, stderr)."""
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        # mlflow.set_tracking_uri (an earlier test's run) also sets this variable process-wide
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        code = export_cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def predict_file(source: str, texts: list[str], folder: Path, store: str = "") -> list[dict]:
    """predict.py over a CSV of `texts`; the rows it wrote."""
    data, out = folder / "texts.csv", folder / "pred.csv"
    with open(data, "w", newline="") as handle:
        csv.writer(handle).writerows([["text"], *[[t] for t in texts]])
    extra = [f"tracking_uri={store}"] if store else []
    assert predict_cli.main([f"source={source}", f"input={data}", f"output={out}", *extra]) == 0
    with open(out) as handle:
        return list(csv.DictReader(handle))


def intent_texts(intent_data: Path) -> list[str]:
    with open(intent_data / "intents" / "test.csv") as handle:
        return [row["text"] for row in csv.DictReader(handle)]


def test_onnx_int8_predicts_like_the_pytorch_model(
    quickstart_run, onnx_int8, intent_data, tmp_path, capsys
):
    folder, run_dir, run_id = quickstart_run
    info = json.loads((onnx_int8 / "model_info.json").read_text())
    assert (info["format"], info["quantize"], info["runtime"]) == ("onnx", "int8", "onnxruntime")
    assert info["check"]["rows"] == 32 and info["check"]["agreement"] >= 0.99
    assert info["labels"] == ["card_lost", "exchange", "refund", "top_up"]
    texts = intent_texts(intent_data)
    pytorch = predict_file(str(run_dir / "export"), texts, tmp_path)
    assert len({r["label"] for r in pytorch}) > 1  # the model tells intents apart: not trivial
    onnx = predict_file(str(onnx_int8), texts, tmp_path)
    same = sum(a["label"] == b["label"] for a, b in zip(onnx, pytorch, strict=True))
    assert same / len(texts) >= 0.99
    for a, b in zip(onnx, pytorch, strict=True):
        assert float(a["probability"]) == pytest.approx(float(b["probability"]), abs=0.1)
    # the same export, logged as a model of the run, predicts the same through the MLflow store
    store = f"sqlite:///{folder}/mlflow.db"
    capsys.readouterr()
    logged = predict_file(f"runs:/{run_id}/model_onnx_int8", texts, tmp_path, store)
    assert [r["label"] for r in logged] == [r["label"] for r in onnx]
    assert "Downloading artifacts" not in capsys.readouterr().err  # no bar in a log
    experiments = [e.experiment_id for e in MlflowClient(store).search_experiments()]
    models = MlflowClient(store).search_logged_models(experiment_ids=experiments)
    assert {m.name for m in models} >= {"model", "model_onnx_int8"}
    assert {m.source_run_id for m in models} == {run_id}


def test_export_refuses_what_it_cannot_do_and_writes_nothing(quickstart_run, onnx_int8, capsys):
    folder, run_dir, _ = quickstart_run
    cases = [
        (["format=onnx", "quantize=q8_0"], 2, "format=onnx takes ['none', 'int8']"),
        (["format=gguf", "quantize=q8_0"], 1, "format=gguf is for decoders"),
        (["format=onnx", "quantize=int8"], 1, "exists and is not empty"),
        # a tolerance nothing quantised meets: refused, nothing left behind
        (
            ["format=onnx", "quantize=int8", "output=strict", "max_difference=0"],
            1,
            "predicts unlike",
        ),
    ]
    for args, code, message in cases:
        got, _, err = exported(folder, capsys, f"source={run_dir}", *args)
        assert got == code and message in err and "Traceback" not in err, (args, err)
    assert not (folder / "strict").exists() and not (folder / ".strict.partial").exists()
    got, _, err = exported(folder, capsys, "source=runs:/0123456789abcdef/model")
    assert got == 1 and "was not found in the MLflow store" in err


def test_export_from_the_registry_with_an_alias(quickstart_run, capsys):
    folder, _run_dir, run_id = quickstart_run
    code, out, err = exported(
        folder,
        capsys,
        f"source={run_id}",
        "format=hf",
        f"output={folder / 'merged_hf'}",
        "register_as=intents_hf",
        "alias=live",
    )
    assert code == 0 and out.strip().splitlines()[-1] == str(folder / "merged_hf"), err
    info = json.loads((folder / "merged_hf" / "model_info.json").read_text())
    assert info["format"] == "hf" and not (folder / "merged_hf" / "adapter_config.json").exists()
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    assert client.get_model_version_by_alias("intents_hf", "live").run_id == run_id
    code, out, err = exported(
        folder,
        capsys,
        "source=models:/intents_hf@live",
        "format=onnx",
        f"output={folder / 'from_registry'}",
        "log_model=false",
    )
    assert code == 0 and (folder / "from_registry" / "model.onnx").is_file(), err


@pytest.mark.slow
def test_mlflow_models_serve_serves_an_onnx_export(quickstart_run, onnx_int8, intent_data):
    folder, _run_dir, run_id = quickstart_run
    rows = [{"text": t} for t in intent_texts(intent_data)[:6]]
    from tunelab.serving.predict import load_predictor

    expected = load_predictor(str(onnx_int8), None).predict(rows)
    with served(f"runs:/{run_id}/model_onnx_int8", folder) as url:
        answers = invoke(url, {"dataframe_records": rows})
    assert [a["label"] for a in answers] == [e["label"] for e in expected]


def test_a_flipped_label_counts_against_agreement_not_the_probability_difference():
    from tunelab.export.check import compare

    expected = [{"label": "a", "probability": 0.9}, {"label": "b", "probability": 0.51}]
    got = [{"label": "a", "probability": 0.88}, {"label": "c", "probability": 0.95}]
    found = compare(expected, got)
    assert found.agreement == 0.5
    assert found.max_difference == pytest.approx(0.02)  # not 0.44: label c is another class
    assert compare(expected, expected).max_difference == 0.0


@pytest.mark.slow
def test_the_deployment_table_builds_scores_times_and_logs_every_variant(
    quickstart_run, tmp_path, monkeypatch, capsys
):
    import importlib.util
    import shutil
    import sys

    _, run_dir, _ = quickstart_run
    shutil.copytree(run_dir, tmp_path / "pruned_run")  # stands in for a pruned run's folder
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "deploy.py"
    spec = importlib.util.spec_from_file_location("deploy", script)
    deploy = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "deploy", deploy)  # its dataclass looks its module up
    spec.loader.exec_module(deploy)
    store = f"sqlite:///{tmp_path / 'deploy.db'}"
    argv = ["deploy.py", "--smoke", "--classifier", str(run_dir), "--tracking-uri", store]
    monkeypatch.setattr(sys, "argv", [*argv, "--pruned", str(tmp_path / "pruned_run")])
    deploy.main()
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    names = [line.split("|")[1].strip() for line in table[1:]]
    variants = ["pytorch fp32", "pytorch int8", "onnx none", "onnx int8", "pruned"]
    assert names == [*variants, "pruned + onnx int8"]
    sizes = {name: float(line.split("|")[3]) for name, line in zip(names, table[1:], strict=True)}
    assert sizes["onnx int8"] < sizes["onnx none"]
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("deploy").experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 6 and all("deploy/rows_per_s" in r.data.metrics for r in children)
