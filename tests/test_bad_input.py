"""Bad data, a wrong model path and a NaN loss each stop with a named error and a fix."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import tiny_overrides, write_intents
from mlflow import MlflowClient
from module_helpers import task_config

import run as cli
from datamodules.classification import ClassificationDataModule
from datamodules.text_classification import TextClassification
from tunelab.base.errors import DataError, ModelLoadError


def datamodule(root: Path, tokenizer: Path, **overrides) -> ClassificationDataModule:
    settings = {
        "_target_": "datamodules.text_classification.TextClassification",
        "name": "text_classification",
        "root": str(root),
        "path": "intents",
        "label_column": "category",
    } | overrides
    data = TextClassification.model_validate(settings)
    return ClassificationDataModule(data=data, tokenizer=str(tokenizer), max_length=16, seed=42)


def rewrite(csv_path: Path, rows: list[list]) -> None:
    with open(csv_path, "w", newline="") as handle:
        csv.writer(handle).writerows([["text", "category"], *rows])


def test_missing_column_names_the_columns_and_the_override(intent_data, tiny_bert):
    with pytest.raises(DataError) as caught:
        datamodule(intent_data, tiny_bert, text_column="utterance").setup()
    message = str(caught.value)
    assert "column 'utterance' (data.text_column) is missing" in message
    assert "['text', 'category']" in message and "data.text_column=<one of those>" in message


def test_empty_split_is_named(tmp_path, tiny_bert):
    write_intents(tmp_path / "intents")
    rewrite(tmp_path / "intents" / "test.csv", [])
    with pytest.raises(DataError, match=r"test\.csv \(the test split\) has no rows"):
        datamodule(tmp_path, tiny_bert).setup()


def test_label_outside_the_training_labels_is_named(tmp_path, tiny_bert):
    write_intents(tmp_path / "intents")
    rewrite(
        tmp_path / "intents" / "test.csv",
        [["where is my card", "card_lost"], ["cancel my loan", "loan_cancel"]],
    )
    with pytest.raises(DataError) as caught:
        datamodule(tmp_path, tiny_bert).setup()
    assert "label 'loan_cancel' in row 1 of the test split is out of range" in str(caught.value)


def test_integer_label_out_of_range_is_named(tmp_path, tiny_bert):
    folder = tmp_path / "ints"
    folder.mkdir()
    (folder / "train.jsonl").write_text(
        "".join(f'{{"text": "example {i}", "label": {i % 3}}}\n' for i in range(30))
    )
    (folder / "test.jsonl").write_text(
        '{"text": "odd one", "label": 5}\n{"text": "x", "label": 1}\n'
    )
    with pytest.raises(DataError, match=r"label 5 in row 0 of the test split is out of range"):
        datamodule(tmp_path, tiny_bert, path="ints", label_column="label").setup()


def test_local_formats_load_with_carved_splits(tmp_path, tiny_bert):
    folder = tmp_path / "parquet"
    folder.mkdir()
    import pandas as pd

    rows = [{"text": f"sample {i}", "label": ["a", "b"][i % 2]} for i in range(40)]
    pd.DataFrame(rows).to_parquet(folder / "train.parquet")
    dm = datamodule(
        tmp_path, tiny_bert, path="parquet", label_column="label", val_size=0.25, test_size=8
    )
    dm.setup()
    sizes = {split: len(ds) for split, ds in dm.splits.items()}
    assert sizes == {"train": 24, "validation": 8, "test": 8} and dm.labels == ["a", "b"]
    assert sorted(dm.splits["validation"]["labels"]) == [0] * 4 + [1] * 4  # stratified


def test_missing_data_names_the_data_root(tmp_path, tiny_bert):
    with pytest.raises(DataError, match="TUNELAB_DATA_DIR"):
        datamodule(tmp_path, tiny_bert, path="nowhere").setup()


def test_wrong_model_path_is_a_named_error(tmp_path):
    from tunelab.base import models as tasks
    from tunelab.base.schema import ModelConfig

    empty = tmp_path / "not_a_model"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"Fix: point model\.name_or_path at a local folder"):
        tasks.load_pretrained(ModelConfig(name_or_path=str(empty)), task_config(), ["a", "b"])


def test_nan_loss_stops_with_a_named_error_and_keeps_the_run(
    workdir, tiny_bert, intent_data, capsys
):
    args = [
        "experiment=full_minilm_banking77",
        *tiny_overrides(tiny_bert, intent_data),
        "optim.lr=0.5",
        "optim.weight_decay=1e6",
        "optim.warmup_ratio=0",
        "optim.scheduler=constant",
        "trainer.max_epochs=20",
    ]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "train/loss became nan" in err.lower() and "lower optim.lr (now 0.5)" in err
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FAILED" and "params/total" in run.data.metrics
