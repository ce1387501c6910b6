"""Prepared data: tokenised once, cached by what it depends on, shared by concurrent processes,
and never cached half-written or after a data error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, write_intents
from datasets import Dataset, DatasetDict
from decoder_helpers import build_tiny, write_qa
from test_decoder_data import _datamodule

from datamodules import prepared
from datamodules.classification import ClassificationDataModule
from datamodules.instruction import InstructionDataModule
from datamodules.text_classification import TextClassification
from tunelab.base.errors import DataError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own cache folder."""
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture()
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The datamodules' builds (load + tokenise), one entry per call."""
    calls: list[str] = []
    for family in (ClassificationDataModule, InstructionDataModule):
        original = family._prepare

        def counted(self, original=original):
            calls.append(type(self).__name__)
            return original(self)

        monkeypatch.setattr(family, "_prepare", counted)
    return calls


@pytest.fixture(scope="module")
def mistral(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny_decoder") / "mistral")


def _classifier(tiny_bert: Path, root: Path, max_length: int = 16, **settings):
    data = TextClassification(
        _target_="datamodules.text_classification.TextClassification",
        name="intents",
        root=str(root),
        path="intents",
        **({"label_column": "category"} | settings),
    )
    return ClassificationDataModule(
        data=data, tokenizer=str(tiny_bert), max_length=max_length, seed=42
    )


def _decoder(model: Path, root: Path) -> InstructionDataModule:
    return _datamodule(root, model, packing=True, batch_size=4)


def _batches(datamodule) -> list[dict[str, list]]:
    loaders = (datamodule.train_dataloader(), datamodule.val_dataloader())
    return [
        {k: v.tolist() for k, v in batch.items() if isinstance(v, torch.Tensor)}
        for loader in loaders
        for batch in loader
    ]


def _entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.suffix != ".lock")


def test_a_second_classifier_loads_the_cache_and_batches_the_same(
    tiny_bert, tmp_path, cache, builds, monkeypatch
):
    write_intents(tmp_path / "intents")
    first = _classifier(tiny_bert, tmp_path)
    first.setup("fit")
    second = _classifier(tiny_bert, tmp_path, batch_size=8)  # batching is not in the key
    second.setup("fit")
    assert builds == ["ClassificationDataModule"] and len(_entries(cache)) == 1
    assert second._tokenizer is None  # nothing tokenised: the splits came from the cache
    assert second.labels == first.labels == ["card_lost", "exchange", "refund", "top_up"]
    monkeypatch.setenv("TUNELAB_CACHE", "off")
    fresh = _classifier(tiny_bert, tmp_path)
    fresh.setup("fit")  # no cache: built again, nothing written
    assert builds == ["ClassificationDataModule"] * 2 and len(_entries(cache)) == 1
    assert fresh.labels == second.labels
    assert fresh.splits["test"].features == second.splits["test"].features
    assert _batches(first) == _batches(fresh)


def test_a_second_decoder_datamodule_gets_the_same_packed_rows_and_records(
    mistral, tmp_path, cache, builds, monkeypatch
):
    write_qa(tmp_path)
    first = _decoder(mistral, tmp_path)
    first.setup("fit")
    second = _decoder(mistral, tmp_path)
    second.setup("fit")
    assert builds == ["InstructionDataModule"]
    assert "position_ids" in second.splits["train"].column_names  # packed
    assert second.records == first.records and second.records["test"][0]["row"] == 0
    monkeypatch.setenv("TUNELAB_CACHE", "off")
    fresh = _decoder(mistral, tmp_path)
    fresh.setup("fit")
    assert fresh.records == second.records
    assert second.generation_prompts(2) == fresh.generation_prompts(2)
    assert _batches(second) == _batches(fresh)


def test_max_length_and_a_changed_source_file_make_new_keys(tiny_bert, tmp_path, cache, builds):
    write_intents(tmp_path / "intents")
    _classifier(tiny_bert, tmp_path).setup()
    longer = _classifier(tiny_bert, tmp_path, max_length=24)
    longer.setup()
    assert len(builds) == 2 and len(_entries(cache)) == 2
    train = tmp_path / "intents" / "train.csv"
    stat = train.stat()
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched
    _classifier(tiny_bert, tmp_path).setup()
    assert len(builds) == 3
    with open(train, "a") as handle:  # edited: one more row
        handle.write("refund please now,refund\n")
    edited = _classifier(tiny_bert, tmp_path)
    edited.setup()
    assert len(builds) == 4 and len(_entries(cache)) == 4
    _classifier(tiny_bert, tmp_path).setup()
    assert len(builds) == 4  # unchanged since: cached


CHILD = """
import json, sys, time
from pathlib import Path
from datasets import Dataset, DatasetDict
from datamodules import prepared

root, counter, go, out = map(Path, sys.argv[1:])

def build():
    with counter.open("a") as handle:
        handle.write("built\\n")
    time.sleep(1.0)  # the other process arrives while this one builds
    rows = {"input_ids": [[1, 2, 3], [4, 5]], "labels": [0, 1]}
    return DatasetDict({"train": Dataset.from_dict(rows)}), {"labels": ["a", "b"]}

out.with_suffix(".ready").touch()
while not go.exists():
    time.sleep(0.01)
splits, extras = prepared.prepare_once({"data": "same"}, build, root)
out.write_text(json.dumps([splits["train"].to_dict(), extras]))
"""


def test_two_processes_at_once_build_once_and_get_the_same_data(tmp_path):
    counter, go = tmp_path / "builds.txt", tmp_path / "go"
    outs = [tmp_path / f"out{i}.json" for i in range(2)]
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path / "cache"), str(counter), str(go), str(o)],
            cwd=REPO,
            env=env,
        )
        for o in outs
    ]
    deadline = time.monotonic() + 120
    while not all(o.with_suffix(".ready").exists() for o in outs):
        assert time.monotonic() < deadline and all(c.poll() is None for c in children)
        time.sleep(0.05)
    go.touch()  # both start preparing at the same moment
    assert [c.wait(timeout=120) for c in children] == [0, 0]
    assert counter.read_text() == "built\n"
    first, second = (json.loads(o.read_text()) for o in outs)
    rows = {"input_ids": [[1, 2, 3], [4, 5]], "labels": [0, 1]}
    assert first == second == [rows, {"labels": ["a", "b"]}]


def test_a_data_error_while_building_surfaces_and_caches_nothing(
    tiny_bert, tmp_path, cache, builds
):
    write_intents(tmp_path / "intents")
    broken = _classifier(tiny_bert, tmp_path, label_column="intent")
    with pytest.raises(DataError, match=r"column 'intent' \(data.label_column\) is missing"):
        broken.setup()
    assert builds and _entries(cache) == []
    error = DataError("the train split is empty")

    def fails_after_loading():
        Dataset.from_dict({"x": [1]})
        raise error

    with pytest.raises(DataError) as raised:
        prepared.prepare_once({"data": "broken"}, fails_after_loading, cache)
    assert raised.value is error and _entries(cache) == []
    splits = DatasetDict({"train": Dataset.from_dict({"x": [1]})})
    data, extras = prepared.prepare_once({"data": "broken"}, lambda: (splits, {}), cache)
    assert data["train"]["x"] == [1] and extras == {} and len(_entries(cache)) == 1
