"""`export.merge`: the adapter merged into the module in memory equals the adapter export merged
into a freshly loaded base (the way a user merges an export), weights and outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from module_helpers import make_module

LABELS = ["card", "refund", "rate"]


def _trained_lora(tiny_bert: Path):
    """A LoRA module on the tiny BERT whose adapter and head are non-trivial (not B=0)."""
    model = {"name_or_path": str(tiny_bert), "task": "sequence_classification", "max_length": 16}
    module = make_module("lora", model, LABELS)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in module.model.parameters():
            if param.requires_grad:
                param.normal_(0.0, 0.2)
    return module


@pytest.mark.usefixtures("one_torch_thread")
def test_in_memory_merge_equals_the_export_merged_into_a_reloaded_base(tmp_path, tiny_bert):
    from peft import PeftModel

    from tunelab.run.merge import export_merged

    module = _trained_lora(tiny_bert)
    adapter = module.export(tmp_path / "export")
    reloaded = PeftModel.from_pretrained(module.load_base(), str(adapter)).merge_and_unload()
    ids = torch.randint(1000, 20000, (4, 12))
    with torch.no_grad():
        adapted = module.model.eval()(input_ids=ids).logits

    assert export_merged(module, adapter, tmp_path / "merged") == tmp_path / "merged"
    from transformers import AutoModelForSequenceClassification

    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    want, have = reloaded.state_dict(), merged.state_dict()
    assert want.keys() == have.keys()
    for key, value in want.items():
        torch.testing.assert_close(have[key], value, rtol=0, atol=1e-6, msg=key)
    with torch.no_grad():
        logits = merged(input_ids=ids).logits
        torch.testing.assert_close(logits, reloaded.eval()(input_ids=ids).logits)
    torch.testing.assert_close(logits, adapted, rtol=1e-5, atol=1e-5)
