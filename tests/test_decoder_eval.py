"""Decoder evaluation on the test split: generation scores (ROUGE-L, exact match, length) and
option scoring by log-likelihood (PubMedQA's decision accuracy), on a stub and a tiny Mistral."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from decoder_helpers import build_tiny
from mlflow import MlflowClient

import run as cli
from callbacks.generation_eval import normalize, score_answers
from callbacks.option_scoring import score_options, sequence_logprobs

pytestmark = pytest.mark.usefixtures("one_torch_thread")
IGNORE = -100


class Bigram(torch.nn.Module):
    """A causal LM stub whose next-token logits are a fixed table row of the current token."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.table[input_ids])


def test_generation_scores_are_rouge_l_and_normalised_exact_match():
    answers = ["The answer is Yes.", "blood sugar is high", "nothing alike"]
    references = ["answer is yes", "blood sugar is too high", "completely different words"]
    scores = score_answers(answers, references)
    assert scores["exact_match"] == [1.0, 0.0, 0.0]
    assert scores["rougeL"][0] == pytest.approx(2 * 0.75 / 1.75)  # LCS 3 of 4 and 3 of 3 tokens
    # LCS "blood sugar is high" = 4 of 4 predicted and 4 of 5 reference tokens
    assert scores["rougeL"][1] == pytest.approx(2 * 1.0 * 0.8 / 1.8)
    assert scores["rougeL"][2] == 0.0
    assert normalize("  An Apple, the  PIE! ") == "apple pie"


def test_option_scoring_sums_the_log_probs_of_the_response_tokens_only():
    torch.manual_seed(0)
    table = torch.randn(6, 6)
    model = Bigram(table)
    prompt = [1, 2]
    rows = [
        {"input_ids": [*prompt, 3], "labels": [IGNORE, IGNORE, 3]},
        {"input_ids": [*prompt, 4, 5], "labels": [IGNORE, IGNORE, 4, 5]},
        {"input_ids": [*prompt, 5], "labels": [IGNORE, IGNORE, 5]},
    ]
    logp = table.log_softmax(dim=-1)
    expected = torch.tensor([logp[2, 3], logp[2, 4] + logp[4, 5], logp[2, 5]])
    scores = sequence_logprobs(model, rows, pad_id=0)
    assert torch.allclose(scores, expected, atol=1e-5)
    # chunked scoring is the same, and the chosen option is the best summed log-prob
    assert torch.allclose(score_options(model, rows, pad_id=0, chunk=2), expected, atol=1e-5)
    table.data[2] = torch.tensor([0.0, 0, 0, 0, 0, 9])  # make option "5" overwhelmingly likely
    assert int(sequence_logprobs(model, rows, pad_id=0).argmax()) == 2


def write_pubmedqa(root: Path, n: int = 24) -> Path:
    """A tiny PQA-L folder: `n` PMIDs, the first 8 test, decisions cycling yes / no / maybe."""
    decisions = ["yes", "no", "maybe"]
    entries = {
        str(pmid): {
            "QUESTION": f"What is diabetes {pmid} ?",
            "CONTEXTS": ["blood sugar is too high."],
            "LABELS": ["RESULTS"],
            "LONG_ANSWER": "Diabetes is a disease.",
            "final_decision": decisions[pmid % 3],
        }
        for pmid in range(n)
    }
    folder = root / "pubmedqa"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ori_pqal.json").write_text(json.dumps(entries))
    test = {str(p): decisions[p % 3] for p in range(8)}
    (folder / "test_ground_truth.json").write_text(json.dumps(test))
    return root


def test_decoder_run_logs_generation_scores_and_pubmedqa_decision_accuracy(tmp_path, monkeypatch):
    model = build_tiny(tmp_path / "mistral")
    root = write_pubmedqa(tmp_path / "data")
    args = [
        "experiment=lora_tiny_mistral",
        f"model.name_or_path={model}",
        "model.max_length=96",
        "data=pubmedqa",
        f"data.root={root}",
        "data.val_size=4",
        "data.packing=false",
        "data.max_train_samples=null",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0",
        "logger.tracking_uri=sqlite:///mlflow.db",
        "export.save_model=false",
        "export.merge=false",
        "callbacks=[{_target_: callbacks.generation_eval.GenerationEval, max_examples: 3,"
        " max_new_tokens: 8}, {_target_: callbacks.option_scoring.OptionScoring}]",
    ]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.main(args) == 0
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    metrics = run.data.metrics
    keys = {"test/rougeL", "test/exact_match", "test/gen_len", "test/decision_acc"}
    assert keys <= set(metrics)
    assert 0.0 <= metrics["test/rougeL"] <= 1.0 and metrics["test/gen_len"] >= 0
    # 8 test PMIDs: 3 yes, 3 no, 2 maybe
    assert metrics["test/decision_majority_acc"] == pytest.approx(3 / 8)
    assert metrics["test/decision_acc"] in {i / 8 for i in range(9)}
    report = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    names = {"generations.csv", "generations.md", "option_scores.csv"}
    assert report == {f"report/{name}" for name in names}
    [run_dir] = (tmp_path / "outputs").glob("*/*")
    assert "test/decision_acc" in json.loads((run_dir / "test_metrics.json").read_text())
