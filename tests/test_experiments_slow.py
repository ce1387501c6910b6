"""Slow: every classification recipe runs end to end (fast_dev_run) on the tiny BERT."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_overrides
from omegaconf import OmegaConf

import run as cli
from tunelab.config.compose import GROUP_DIRS, available

# qlora needs layers with >= 64 input features on CPU (the tiny BERT has 32); distill needs a
# teacher export: both are covered by their own tests.
SKIP = {"qlora_minilm_banking77", "distill_minilm_banking77"}
CLASSIFIERS = [
    name
    for name in available("experiment")
    if "minilm" in str(OmegaConf.load(GROUP_DIRS["experiment"] / f"{name}.yaml").get("defaults"))
    and name not in SKIP
]


def dataset_only_keys(name: str) -> list[str]:
    """`data:` keys the recipe sets that the CSV loader (the fixtures' data) does not have."""
    from datamodules.text_classification import TextClassification

    recipe = OmegaConf.load(GROUP_DIRS["experiment"] / f"{name}.yaml")
    return [k for k in recipe.get("data") or {} if k not in TextClassification.model_fields]


def fit_tiny_bert(name: str) -> list[str]:
    """Overrides that fit the recipe to the tiny BERT's 2 layers (freeze's top 3, prune's drops)."""
    method = OmegaConf.load(GROUP_DIRS["experiment"] / f"{name}.yaml").get("method") or {}
    fitted = []
    if method.get("trainable_layers"):
        fitted.append(f"method.trainable_layers={min(method['trainable_layers'], 2)}")
    if method.get("drop_layers"):  # pruning keeps at least one of the two blocks
        fitted.append(f"method.drop_layers={min(method['drop_layers'], 1)}")
    return fitted


@pytest.mark.slow
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_recipe_runs_end_to_end(name: str, workdir: Path, tiny_bert: Path, intent_data: Path):
    args = [f"experiment={name}", *tiny_overrides(tiny_bert, intent_data), "trainer.fast_dev_run=2"]
    args += [f"~data.{key}" for key in dataset_only_keys(name)] + fit_tiny_bert(name)
    if "out_of_scope" in str(OmegaConf.load(GROUP_DIRS["experiment"] / f"{name}.yaml")):
        args.append("data.out_of_scope=refund")  # the intents' stand-in for CLINC150's `oos`
    assert cli.main(args) == 0
    [run_dir] = (workdir / "outputs").glob("*/*")
    assert (run_dir / "test_metrics.json").exists() and any((run_dir / "export").iterdir())
