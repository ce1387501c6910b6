"""method=prune with method.head_fraction: whole attention heads removed by their importance,
real smaller q/k/v/o matrices, a config `from_pretrained` loads, the outputs of the original
with those heads masked; BERT (no head_dim in its config) refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides
from decoder_helpers import build_tiny, qa_rows
from transformers import AutoModelForCausalLM, AutoTokenizer

import run as cli
from modules.blocks import find_layers
from modules.heads import head_scores, heads_to_keep
from modules.prune import PruneMethod
from tasks.causal_lm import CausalLM

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Batches:
    """The part of a datamodule `prepare` reads: training batches of the tiny QA texts."""

    def __init__(self, folder: Path):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        texts = [f"{r['instruction']} {r['input']} {r['response']}" for r in qa_rows(12)]
        self.batches = [
            tokenizer(texts[i : i + 4], return_tensors="pt", padding=True) for i in (0, 4, 8)
        ]

    def train_dataloader(self) -> list[dict]:
        return [dict(b) | {"labels": b["input_ids"]} for b in self.batches]


def masked(model: torch.nn.Module, keep: list[list[int]]) -> torch.nn.Module:
    """`model` with every head not in `keep` (per block) silenced: its o_proj columns zeroed."""
    size = model.config.head_dim
    for block, kept in zip(find_layers(model)[1], keep, strict=True):
        weight = block.self_attn.o_proj.weight.data.unflatten(1, (-1, size))
        gone = [h for h in range(weight.shape[1]) if h not in kept]
        weight[:, gone] = 0
    return model


@pytest.mark.parametrize(
    ("kv_heads", "fraction", "expected"),
    # grouped-query attention (4 query heads over 2 k/v heads): one query head per group goes,
    # k/v stay; plain multi-head attention (4 and 4): whole heads go from q, k, v and o
    [(2, 0.5, (2, 2)), (4, 0.25, (3, 3))],
)
def test_pruned_heads_load_with_from_pretrained_and_match_the_masked_model(
    tmp_path, kv_heads, fraction, expected
):
    folder = build_tiny(tmp_path / "tiny", num_key_value_heads=kv_heads)
    data = Batches(folder)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    size = model.config.head_dim
    _, blocks = find_layers(model)
    scores = head_scores(model, blocks, data.train_dataloader()[:2])
    removed = round(fraction * (4 // kv_heads if kv_heads < 4 else 4))
    keep = [heads_to_keep(score, model.config, removed) for score in scores]
    if kv_heads < 4:  # one head of each group stays
        assert all(len({h // 2 for h in kept}) == 2 for kept in keep)
    method = PruneMethod(
        _target_="modules.prune.PruneMethod", name="prune", head_fraction=fraction,
        ffn_fraction=0.0, batches=2,
    )  # fmt: skip
    task = CausalLM(_target_="tasks.causal_lm.CausalLM", name="t")
    pruned = method.prepare(model, data, task).eval()
    heads, kv = expected
    attention = find_layers(pruned)[1][0].self_attn
    assert attention.q_proj.weight.shape == (heads * size, 64)  # real smaller matrices
    assert attention.o_proj.weight.shape == (64, heads * size)
    assert attention.k_proj.weight.shape == (kv * size, 64)
    pruned.save_pretrained(tmp_path / "pruned")
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == expected
    assert config["head_dim"] == size
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    reference = masked(AutoModelForCausalLM.from_pretrained(folder).eval(), keep)
    batch = {k: v for k, v in data.batches[2].items()}
    with torch.no_grad():
        got, want = loaded(**batch).logits, reference(**batch).logits
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    original = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(folder).parameters())
    assert sum(p.numel() for p in loaded.parameters()) < original


def test_reshape_rebuilds_pruned_heads_from_a_saved_state(tmp_path):
    """A checkpoint of a pruned model loads into a fresh base (resume, adapter-less exports)."""
    folder = build_tiny(tmp_path / "tiny")
    data = Batches(folder)
    method = PruneMethod(
        _target_="modules.prune.PruneMethod", name="prune", head_fraction=0.5, batches=1
    )
    task = CausalLM(_target_="tasks.causal_lm.CausalLM", name="t")
    pruned = method.prepare(AutoModelForCausalLM.from_pretrained(folder), data, task).eval()
    state = pruned.state_dict()
    fresh = method.reshape(AutoModelForCausalLM.from_pretrained(folder), state).eval()
    fresh.load_state_dict(state)
    assert fresh.config.num_attention_heads == 2
    batch = dict(data.batches[0])
    with torch.no_grad():
        assert torch.equal(fresh(**batch).logits, pruned(**batch).logits)


def test_bert_head_pruning_is_refused_with_the_reason(tiny_bert, intent_data, capsys):
    args = ["method=prune", "method.head_fraction=0.5", *tiny_overrides(tiny_bert, intent_data)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "method.head_fraction: bert's config has no head_dim" in err
    assert "Traceback" not in err


def test_head_fraction_that_removes_every_head_is_refused(tmp_path):
    from transformers import AutoConfig

    from tunelab.base.plugin import ModelProbe

    folder = build_tiny(tmp_path / "tiny")
    config = AutoConfig.from_pretrained(folder)
    probe = ModelProbe(
        name_or_path=str(folder), model_type="mistral", num_layers=2, max_positions=1024,
        linear_names=["model.layers.0.mlp.down_proj"], hf_config=config,
    )  # fmt: skip
    problems: list[str] = []
    for fraction in (0.5, 0.8):
        PruneMethod(
            _target_="modules.prune.PruneMethod", name="prune", head_fraction=fraction
        ).check(probe, None, problems)
    [problem] = problems  # 0.5 keeps one of the 2 query heads per group, 0.8 none
    assert problem.startswith("method.head_fraction: 0.8 of the 2 query heads per key/value")


@pytest.mark.slow
def test_a_decoder_prune_run_exports_fewer_heads(tmp_path, monkeypatch):
    """run.py with method=prune on the tiny Mistral: the export has 2 of 4 query heads."""
    from decoder_helpers import decoder_overrides, write_qa
    from transformers import AutoConfig

    model, data = build_tiny(tmp_path / "tiny"), write_qa(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    lora_keys = [f"~method.{key}" for key in ("r", "alpha", "dropout", "target_modules")]
    args = [
        "experiment=lora_tiny_mistral",
        *decoder_overrides(model, data, "trainer.max_epochs=1"),
        "method=prune",
        *lora_keys,
        "method.head_fraction=0.5",
        "method.batches=2",
    ]
    assert cli.main(args) == 0
    [export] = (tmp_path / "outputs" / "lora_tiny_mistral_qa").glob("*/export")
    config = AutoConfig.from_pretrained(export)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 2, 16)
    from tunelab.serving.predict import load_predictor

    rows = [{"instruction": "What is diabetes ?", "input": "about the liver"}]
    [row] = load_predictor(str(export), None).predict(rows, max_new_tokens=4)
    assert isinstance(row["generation"], str)
