"""Trainer fields Lightning reads by type keep it: an int counts batches, a float is a share.

`trainer.limit_test_batches=1` reads one test batch and `1.0` the whole split, as in Lightning;
every callback with a loop of its own (classification report, generation and option-scoring
evaluation, generation previews, mask preview) reads no more than the stage it belongs to.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import lightning as L
import pytest
from conftest import tiny_overrides
from decoder_helpers import build_tiny

from tunelab.base.errors import ConfigError
from tunelab.config.validate import load_config
from tunelab.run.pipeline import run_experiment

EVAL_BATCH = 4


class Count(L.Callback):
    """Batches each stage read, and the validations run during fitting."""

    def __init__(self) -> None:
        self.train = self.test = self.validations = 0
        self.val: list[int] = []
        self.loader_batches: dict[str, int] = {}

    def on_train_batch_end(self, trainer, *args) -> None:
        self.train += 1
        self.loader_batches["train"] = len(trainer.train_dataloader)

    def on_validation_epoch_start(self, trainer, *args) -> None:
        if not trainer.sanity_checking:
            self.val.append(0)

    def on_validation_batch_end(self, trainer, *args) -> None:
        if not trainer.sanity_checking:
            self.val[-1] += 1
            self.loader_batches["val"] = len(trainer.val_dataloaders)

    def on_test_batch_end(self, trainer, *args) -> None:
        self.test += 1
        self.loader_batches["test"] = len(trainer.test_dataloaders)


def run_with(workdir: Path, tiny_bert: Path, intent_data: Path, *extra: str) -> tuple:
    args = tiny_overrides(
        tiny_bert,
        intent_data,
        "trainer.max_epochs=1",
        f"data.eval_batch_size={EVAL_BATCH}",
        "export.save_model=false",
        *extra,
    )
    _, run = load_config(["experiment=full_minilm_banking77", *args])
    count = Count()
    result = run_experiment(run, callbacks=[count])
    return count, result


FIELDS = ["limit_train_batches", "limit_val_batches", "limit_test_batches", "val_check_interval"]


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.slow  # over 10 s: the default run stays under 10 minutes
def test_an_int_counts_batches_and_a_float_is_a_share(workdir, tiny_bert, intent_data, field):
    one, _ = run_with(workdir, tiny_bert, intent_data, f"trainer.{field}=1")
    whole, _ = run_with(workdir, tiny_bert, intent_data, f"trainer.{field}=1.0")
    half, _ = run_with(workdir, tiny_bert, intent_data, f"trainer.{field}=0.5")
    if field == "val_check_interval":  # 1: validate after every batch; 1.0: once an epoch
        assert len(one.val) == one.train == one.loader_batches["train"] > 2
        assert len(whole.val) == 1
        assert len(half.val) == 2
        return
    stage = field.removeprefix("limit_").removesuffix("_batches")
    read = {"train": lambda c: c.train, "val": lambda c: sum(c.val), "test": lambda c: c.test}
    total = whole.loader_batches[stage]
    assert total > 2, "the split must span several batches for the test to mean anything"
    assert read[stage](one) == (1 if stage != "val" else len(one.val))
    assert read[stage](whole) == total * (len(whole.val) if stage == "val" else 1)
    assert read[stage](half) == int(total * 0.5) * (len(half.val) if stage == "val" else 1)


@pytest.mark.usefixtures("one_torch_thread")
def test_classification_report_reads_the_test_batches_the_test_stage_read(
    workdir, tiny_bert, intent_data
):
    count, result = run_with(workdir, tiny_bert, intent_data, "trainer.limit_test_batches=2")
    assert count.test == 2
    with open(result.run_dir / "report" / "per_class.csv") as handle:
        support = sum(int(row["support"]) for row in csv.DictReader(handle))
    assert support == 2 * EVAL_BATCH
    count, result = run_with(workdir, tiny_bert, intent_data, "trainer.limit_test_batches=1.0")
    with open(result.run_dir / "report" / "per_class.csv") as handle:
        support = sum(int(row["support"]) for row in csv.DictReader(handle))
    assert support > 2 * EVAL_BATCH and math.ceil(support / EVAL_BATCH) == count.test


def test_values_lightning_refuses_are_refused_before_anything_runs():
    with pytest.raises(ConfigError) as err:
        load_config(
            [
                "experiment=quickstart",
                "trainer.limit_test_batches=1.5",
                "trainer.limit_val_batches=-1",
                "trainer.val_check_interval=0",
                "trainer.limit_train_batches=0.0",
            ]
        )
    problems = err.value.problems
    assert len(problems) == 4 and all("1 is one batch, 1.0 the whole split" in p for p in problems)
    _, run = load_config(["experiment=quickstart", "trainer.limit_test_batches=3.0"])
    assert run.trainer.limit_test_batches == 3 and isinstance(run.trainer.limit_test_batches, int)


@pytest.mark.usefixtures("one_torch_thread")
def test_decoder_callbacks_read_only_the_limited_batches(tmp_path, monkeypatch):
    """Generation previews (val), generation and option scoring (test), mask preview (train)."""
    from test_decoder_eval import write_pubmedqa

    model = build_tiny(tmp_path / "mistral")
    root = write_pubmedqa(tmp_path / "data")  # 8 test rows
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = [
        "experiment=lora_tiny_mistral",
        f"model.name_or_path={model}",
        "model.max_length=96",
        "data=pubmedqa",
        f"data.root={root}",
        "data.val_size=4",
        "data.packing=false",
        "data.max_train_samples=null",
        "data.eval_batch_size=2",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0",
        "logger.tracking_uri=sqlite:///mlflow.db",
        "export.save_model=false",
        "export.merge=false",
        "callbacks=[{_target_: callbacks.generation_eval.GenerationEval, max_new_tokens: 4},"
        " {_target_: callbacks.option_scoring.OptionScoring},"
        " {_target_: callbacks.generation.GenerationCallback, num_prompts: 3, max_new_tokens: 4},"
        " {_target_: callbacks.mask_preview.MaskPreviewCallback, num_batches: 3}]",
    ]
    _, run = load_config(args)
    count = Count()
    result = run_experiment(run, callbacks=[count])
    assert (count.train, count.val, count.test) == (1, [1], 1)
    with open(result.run_dir / "report" / "generations.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 2  # one test batch of 2, not 8 rows
    with open(result.run_dir / "report" / "option_scores.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 2
    [preview] = (result.run_dir / "generations").glob("*.json")
    assert len(json.loads(preview.read_text())["prompt"]) == 2  # num_prompts 3, one val batch
    mask = (result.run_dir / "mask_preview.txt").read_text()
    assert "--- batch 0" in mask and "--- batch 1" not in mask  # one training batch


def test_resume_tells_one_batch_from_the_whole_split():
    from tunelab.run.resume import differences

    saved = {"trainer.limit_test_batches": 1.0}
    assert differences(saved, {"trainer.limit_test_batches": 1}) == [
        "trainer.limit_test_batches: was 1.0, now 1"
    ]
    assert differences(saved, {"trainer.limit_test_batches": 1.0}) == []
