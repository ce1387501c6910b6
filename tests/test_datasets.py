"""Datasets as loaders: every YAML validates into its class, loaders import light, CLINC150's
official splits and options, BANKING77's carved validation, and source rows in records."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from pydantic import ValidationError

from datamodules.clinc150 import DOMAINS, Clinc150
from tunelab.base.data_root import data_root
from tunelab.base.plugin import DataConfig
from tunelab.config.compose import register_resolvers

REPO = Path(__file__).resolve().parent.parent
DATA_ROOT = Path(data_root())
LOADERS = [
    "banking77",
    "clinc150",
    "instruction_file",
    "medquad",
    "preference_file",
    "preference_pairs",
    "pubmedqa",
    "text_classification",
]
needs_clinc = pytest.mark.skipif(
    not (DATA_ROOT / "clinc150" / "data_full.json").exists(),
    reason=f"no CLINC150 copy under {DATA_ROOT}",
)
needs_banking77 = pytest.mark.skipif(
    not (DATA_ROOT / "banking77" / "train.csv").exists(),
    reason=f"no BANKING77 copy under {DATA_ROOT}",
)


def _class(target: str) -> type[DataConfig]:
    module, _, name = target.rpartition(".")
    config_class = getattr(importlib.import_module(module), name)
    assert issubclass(config_class, DataConfig)
    return config_class


def _config(name: str, **values) -> DataConfig:
    """The validated config of `configs/data/<name>.yaml` (+ values), as validation builds it."""
    register_resolvers()  # `${data_root:}`
    group = OmegaConf.load(REPO / "configs" / "data" / f"{name}.yaml")
    raw = {**OmegaConf.to_container(group, resolve=True), **values}
    return _class(raw["_target_"]).model_validate(raw)


def _clinc(**values) -> Clinc150:
    return Clinc150(
        _target_="datamodules.clinc150.Clinc150", name="clinc150", root=str(DATA_ROOT), **values
    )


@pytest.mark.parametrize("yaml", sorted(p.stem for p in (REPO / "configs" / "data").glob("*")))
def test_every_data_yaml_validates_into_its_class(yaml):
    needs_path = ("instruction", "preference_file", "text_classification")
    values = {"path": "somewhere"} if yaml in needs_path else {}
    config = _config(yaml, **values)
    assert config.name == yaml and config.family in ("classification", "instruction", "preference")
    assert config.dump()["_target_"].endswith(type(config).__name__)
    text = (REPO / "configs" / "data" / f"{yaml}.yaml").read_text()
    assert text.startswith("# ")  # the description `run.py --help` shows


def test_yaml_sets_only_values_that_differ_from_the_class_defaults():
    for yaml in (REPO / "configs" / "data").glob("*.yaml"):
        group = OmegaConf.to_container(OmegaConf.load(yaml))
        fields = _class(group["_target_"]).model_fields
        for key, value in group.items():
            field = fields.get(key)
            if field is not None and key != "root":
                assert field.default != value, f"{yaml.name}: {key} repeats the class default"


def test_loaders_import_without_torch():
    modules = ", ".join(f"datamodules.{name}" for name in LOADERS)
    heavy = "{'torch', 'datasets', 'lightning', 'transformers'}"
    code = f"import sys, {modules}; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_medquad_config_rejects_the_generic_file_fields():
    with pytest.raises(ValidationError, match="instruction_field"):
        _config("medquad", instruction_field="x")
    with pytest.raises(ValidationError, match="val_size"):
        _config("medquad", val_size=5)  # fractions of documents
    with pytest.raises(ValidationError, match=r"path[\s\S]*is required"):
        _config("instruction")  # path: ??? left unset


def test_unknown_clinc_domain_names_the_valid_ones():
    with pytest.raises(ValidationError) as caught:
        _clinc(domains=["banking", "finance"])
    message = str(caught.value)
    assert "unknown domain(s) ['finance']" in message
    assert all(domain in message for domain in DOMAINS)
    assert _clinc(domains=["banking"]).domains == ["banking"]
    assert _clinc().out_of_scope_label() is None and _clinc(include_oos=True).out_of_scope_label()


@needs_clinc
def test_clinc150_official_splits_in_scope():
    data, names = _clinc().load(seed=0)
    assert {s: len(d) for s, d in data.items()} == {
        "train": 15_000,
        "validation": 3_000,
        "test": 4_500,
    }
    assert len(names) == 150 and names == sorted(names) and "oos" not in names
    assert set(data["test"]["label"]) == set(names)
    domains = json.loads((DATA_ROOT / "clinc150" / "domains.json").read_text())
    assert sorted(domains) == sorted(DOMAINS)
    assert sorted(i for intents in domains.values() for i in intents) == names


@needs_clinc
def test_clinc150_with_out_of_scope_queries():
    data, names = _clinc(include_oos=True).load(seed=0)
    assert {s: len(d) for s, d in data.items()} == {
        "train": 15_100,
        "validation": 3_100,
        "test": 5_500,
    }
    assert len(names) == 151 and names[-1] == "oos" and names[:-1] == sorted(names[:-1])
    assert list(data["test"]["label"]).count("oos") == 1_000


@needs_clinc
def test_clinc150_domains_keep_their_intents_and_the_oos_queries():
    data, names = _clinc(domains=["banking"]).load(seed=0)
    assert len(names) == 15 and {s: len(d) for s, d in data.items()} == {
        "train": 1_500,
        "validation": 300,
        "test": 450,
    }
    data, names = _clinc(domains=["banking", "credit_cards"], include_oos=True).load(seed=0)
    assert len(names) == 31 and len(data["test"]) == 900 + 1_000


@needs_clinc
def test_clinc150_datamodule_exposes_the_out_of_scope_class(tiny_bert):
    from datamodules.classification import ClassificationDataModule

    data = _clinc(domains=["banking"], include_oos=True)
    dm = ClassificationDataModule(data=data, tokenizer=str(tiny_bert), max_length=16, seed=0)
    dm.setup("fit")
    assert dm.out_of_scope == "oos" and dm.labels.index("oos") == 15
    assert len(dm.splits["train"]) == 1_600 and dm.splits["test"].features["labels"].num_classes
    batch = next(iter(dm.test_dataloader()))
    assert int(batch["labels"].max()) < 16


@needs_banking77
def test_banking77_carves_a_stratified_validation_from_train():
    data, names = _config("banking77", root=str(DATA_ROOT)).load(seed=42)
    sizes = {s: len(d) for s, d in data.items()}
    assert sizes["test"] == 3_080 and sizes["train"] + sizes["validation"] == 10_003
    assert len(names) == 77 and len(set(data["validation"]["label"])) == 77
    again, _ = _config("banking77", root=str(DATA_ROOT)).load(seed=42)
    assert list(again["validation"]["text"]) == list(data["validation"]["text"])


def test_instruction_records_name_their_source_row(tmp_path):
    rows = [{"instruction": f"q{i}", "response": f"a{i}"} for i in range(20)]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = _config("instruction", root=str(tmp_path), path="qa.jsonl", val_size=4, test_size=4)
    records = data.load(seed=3)
    assert {s: len(r) for s, r in records.items()} == {"train": 12, "validation": 4, "test": 4}
    seen = [r for split in records.values() for r in split]
    assert sorted(r["row"] for r in seen) == list(range(20))
    assert all(r["instruction"] == f"q{r['row']}" for r in seen)  # the row of the source file
