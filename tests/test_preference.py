"""Preference tuning end to end on the tiny Mistral: pairs from files and from the domain sets,
bad pairs named, DPO starting at ln 2 and learning a synthetic preference on held-out pairs,
ORPO/SimPO without a reference, KTO on unpaired labels, SFT -> DPO with the SFT adapter as the
reference, and the stop when the rewards stay exactly 0."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from decoder_helpers import QUESTIONS, TOPICS, build_tiny, decoder_overrides, write_qa
from mlflow import MlflowClient

import run as cli
from datamodules.preference import PreferenceDataModule
from datamodules.preference_file import PreferenceFile
from tunelab.base.data_root import data_root
from tunelab.base.errors import DataError

GOOD, BAD = "Stay well.", "Good luck."  # chosen responses always end with GOOD
SHARED = Path(data_root())

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pair_rows(n: int, offset: int = 0) -> list[dict[str, str]]:
    """Pairs whose chosen answer ends with GOOD and rejected with BAD; offsets >= 48 are unseen."""
    rows = []
    for i in range(offset, offset + n):
        question, answer = QUESTIONS[i % len(QUESTIONS)]
        topic = TOPICS[(i // len(QUESTIONS)) % len(TOPICS)]
        prompt = f"{question} about the {topic}"
        rows.append({"prompt": prompt, "chosen": f"{answer} {GOOD}", "rejected": f"{answer} {BAD}"})
    return rows


def write_jsonl(folder: Path, splits: dict[str, list[dict]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def kto_rows(pairs: list[dict[str, str]]) -> list[dict]:
    """Unpaired rows: each pair's chosen answer labelled true, rejected false, alternately."""
    return [
        {"prompt": p["prompt"], "completion": p[key], "label": key == "chosen"}
        for i, p in enumerate(pairs)
        for key in [("chosen", "rejected")[i % 2]]
    ]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tiny Mistral folder, data root with pairs/, kto/ and qa/)."""
    root = tmp_path_factory.mktemp("preference")
    train, held_out = pair_rows(48), pair_rows(16, 48)  # validation/test: unseen topics
    write_jsonl(root / "pairs", {"train": train, "validation": held_out, "test": held_out})
    kto = {"train": kto_rows(pair_rows(96) * 2), "validation": kto_rows(held_out * 2)}
    write_jsonl(root / "kto", kto | {"test": kto["validation"]})
    return build_tiny(root / "mistral"), write_qa(root)


def overrides(tiny: tuple[Path, Path], *extra: str) -> list[str]:
    model, root = tiny
    return [
        "experiment=dpo_tiny_mistral",
        f"model.name_or_path={model}",
        "model.max_length=64",
        "data=preference_file",
        f"data.root={root}",
        "data.path=pairs",
        "trainer.max_epochs=3",
        "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0",
        "trainer.log_every_n_steps=1",
        "logger.tracking_uri=sqlite:///mlflow.db",
        "logger.log_model=false",
        *extra,
    ]


def run_cli(folder: Path, args: list[str]) -> tuple[int, MlflowClient, object | None]:
    """Run `run.py` in `folder`; its exit code, the MLflow client and its (only) run."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        code = cli.main(args)
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return code, client, (runs[0] if runs else None)


def history(client: MlflowClient, run, key: str) -> list[float]:
    return [m.value for m in client.get_metric_history(run.info.run_id, key)]


# ----------------------------------------------------------------------------- data
def datamodule(root: Path, tokenizer: Path, max_length: int = 64, **fields) -> Any:
    settings = {"_target_": "datamodules.preference_file.PreferenceFile", "name": "pairs"}
    data = PreferenceFile.model_validate(settings | {"root": str(root), "path": "bad"} | fields)
    return PreferenceDataModule(data=data, tokenizer=str(tokenizer), max_length=max_length, seed=1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"chosen": " "}, "empty chosen in source row 2 (the train split)"),
        ({"rejected": "Good."}, "chosen equals rejected in source row 2 (the train split)"),
        ({"prompt": ""}, "empty prompt in source row 2 (the train split)"),
        ({"prompt": "heart " * 80}, "source row 2 (the train split): the prompt is"),
    ],
)
def test_bad_pairs_are_named(tmp_path, tiny, change, message):
    rows = [{"prompt": "Q ?", "chosen": "Good.", "rejected": "Bad."} for _ in range(4)]
    rows[2] |= change
    write_jsonl(tmp_path / "bad", {"train": rows, "validation": rows[:1], "test": rows[:1]})
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        datamodule(tmp_path, tiny[0]).setup()


def test_pairs_batch_as_chosen_over_rejected_with_the_prompt_masked(tiny):
    dm = datamodule(tiny[1], tiny[0], path="pairs", eval_batch_size=3)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape[0] == 6
    text = dm.tokenizer.decode(batch["input_ids"][0][batch["labels"][0] != -100])
    assert text.strip().endswith(f"{GOOD}</s>") and "[INST]" not in text
    rejected = dm.tokenizer.decode(batch["input_ids"][3][batch["labels"][3] != -100])
    assert rejected.strip().endswith(f"{BAD}</s>")


def test_unpaired_file_needs_unpaired_and_batches_carry_mismatched_rows(tiny):
    with pytest.raises(DataError, match=r"data\.unpaired=true and task\.loss=kto"):
        datamodule(tiny[1], tiny[0], path="kto").setup()
    dm = datamodule(tiny[1], tiny[0], path="kto", unpaired=True, eval_batch_size=4)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape[0] == 8 and batch["desirable"].tolist().count(True) == 2
    kl_row = dm.tokenizer.decode(batch["input_ids"][5][batch["labels"][5] != -100])
    first = dm.tokenizer.decode(batch["input_ids"][0][batch["labels"][0] != -100])
    assert kl_row == first  # the second prompt with the first row's completion
    prompt = (batch["labels"] == -100) & (batch["attention_mask"] == 1)
    assert torch.equal(batch["input_ids"][5][prompt[5]], batch["input_ids"][1][prompt[1]])


@pytest.mark.skipif(not (SHARED / "pubmedqa").is_dir(), reason="no shared PubMedQA copy")
def test_pubmedqa_pairs_differ_only_in_the_decision():
    from datamodules.preference_pairs import PubMedQAPairs

    data = PubMedQAPairs(_target_="x", name="pubmedqa_pairs", root=str(SHARED))
    pairs = data.load(42)
    assert [len(pairs[s]) for s in ("train", "validation", "test")] == [450, 50, 500]
    gold = json.loads((SHARED / "pubmedqa" / "ori_pqal.json").read_text())
    for pair in pairs["test"][:50]:
        reasoning, chosen = pair["chosen"].rsplit("\nAnswer: ", 1)
        rejected_reasoning, rejected = pair["rejected"].rsplit("\nAnswer: ", 1)
        assert reasoning == rejected_reasoning and chosen != rejected
        assert chosen == gold[pair["row"].split()[1]]["final_decision"] == pair["answer"]
    assert data.answer_options() == ["yes", "no", "maybe"]  # scored on test after tuning


@pytest.mark.skipif(not (SHARED / "medquad").is_dir(), reason="no shared MedQuAD copy")
def test_medquad_pairs_reject_another_answer_on_the_same_focus():
    from datamodules.preference_pairs import MedQuADPairs

    pairs = MedQuADPairs(_target_="x", name="medquad_pairs", root=str(SHARED)).load(0)
    assert min(len(pairs[s]) for s in pairs) > 50
    by_row = {p["row"].split(" QAPair")[0] for p in pairs["test"]}
    assert not by_row & {p["row"].split(" QAPair")[0] for p in pairs["train"]}
    assert all(p["chosen"] != p["rejected"] for s in pairs.values() for p in s)
    chosen: dict[str, set[str]] = {}
    rejected: dict[str, set[str]] = {}
    for pair in (p for split in pairs.values() for p in split):
        chosen.setdefault(pair["instruction"].strip(), set()).add(pair["chosen"])
        rejected.setdefault(pair["instruction"].strip(), set()).add(pair["rejected"])
    # a question asked twice in a document: neither of its answers is ever rejected for it
    assert not [q for q in chosen if chosen[q] & rejected[q]]


# ----------------------------------------------------------------------------- training
@pytest.mark.slow
@pytest.mark.parametrize(
    ("loss", "extra"),
    [("dpo", []), ("orpo", []), ("simpo", []), ("dpo", ["task.precompute_reference=true"])],
)
def test_learns_a_synthetic_preference_on_held_out_pairs(tmp_path, tiny, loss, extra):
    code, client, run = run_cli(tmp_path, overrides(tiny, f"task.loss={loss}", *extra))
    assert code == 0
    metrics = run.data.metrics
    assert metrics["val/rewards/accuracies"] >= 0.9 and metrics["test/rewards/accuracies"] >= 0.9
    assert metrics["val/rewards/margins"] > 0
    first = {k: history(client, run, f"train/{k}")[0] for k in ("loss", "rewards/chosen")}
    if loss == "dpo":  # the policy starts as its reference: ln 2 and zero rewards
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
        assert first["rewards/chosen"] == 0.0
        from tunelab.serving.inference import Predictor  # served like an instruction model

        [export] = (tmp_path / "outputs").glob("*/*/export")
        [out] = Predictor(export).predict([{"instruction": "What is gout ?"}], max_new_tokens=4)
        assert isinstance(out["generation"], str)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["task.precompute_reference=true"]])
def test_kto_trains_on_unpaired_labels(tmp_path, tiny, extra):
    args = overrides(tiny, "task.loss=kto", "data.unpaired=true", "data.path=kto", *extra)
    code, _, run = run_cli(tmp_path, args)
    assert code == 0
    metrics = run.data.metrics
    assert metrics["val/rewards/chosen"] > 0 > metrics["val/rewards/rejected"]
    assert metrics["val/rewards/accuracies"] >= 0.9


@pytest.mark.slow
def test_rewards_stuck_at_zero_stop_with_the_cause(tmp_path, tiny, capsys):
    args = overrides(tiny, "optim.lr=1e-30", "trainer.max_steps=6")
    code, _, run = run_cli(tmp_path, args)
    assert code != 0
    err = capsys.readouterr().err
    assert "error: the rewards are exactly 0 after 3 optimiser steps" in err
    assert "optim.lr too small" in err and "Traceback" not in err
    assert run.info.status == "FAILED"


# ----------------------------------------------------------------------------- SFT -> DPO
@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny) -> Path:
    """The folder of a real LoRA SFT run on the tiny QA rows (its adapter in export/)."""
    folder = tmp_path_factory.mktemp("sft")
    model, root = tiny
    extra = ("optim.lr=1e-2", "trainer.max_epochs=4", "logger.log_model=false")
    args = ["experiment=lora_tiny_mistral", *decoder_overrides(model, root, *extra)]
    assert run_cli(folder, [*args, "export.merge=false"])[0] == 0
    [run_dir] = (folder / "outputs").glob("*/*")
    return run_dir


def logps_of(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    from tasks.preference_losses import sequence_logps

    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        return sequence_logps(model(**inputs).logits, batch["labels"]).total


@pytest.mark.slow
def test_sft_then_dpo_uses_the_sft_adapter_as_the_reference(tiny, sft_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunelab.config.validate import load_config
    from tunelab.run.build import build_data_and_module

    _, config = load_config(overrides(tiny, f"task.reference_adapter={sft_run}"))
    datamodule, module = build_data_and_module(config)
    batch = next(iter(datamodule.val_dataloader()))
    with module.task.reference(module.model) as reference:
        found = logps_of(reference, batch)
    base = AutoModelForCausalLM.from_pretrained(tiny[0])
    base_logps = logps_of(base, batch)
    sft = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny[0]), sft_run / "export"
    )
    assert torch.allclose(found, logps_of(sft, batch), atol=1e-4)
    assert (found - base_logps).abs().max() > 1.0  # SFT moved it: the base is not the reference
    assert module.task.forward(module.model, batch).loss.item() == pytest.approx(
        math.log(2), abs=1e-5
    )
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert trainable and all(".default." in n for n in trainable)  # the copy trains, not the SFT


@pytest.mark.slow
def test_dpo_from_an_sft_adapter_learns_the_preference(tmp_path, tiny, sft_run):
    args = overrides(tiny, f"task.reference_adapter={sft_run}")
    code, client, run = run_cli(tmp_path, args)
    assert code == 0 and run.data.metrics["val/rewards/accuracies"] >= 0.9
    assert history(client, run, "train/loss")[0] == pytest.approx(math.log(2), abs=1e-5)


def test_reference_adapter_on_another_base_is_refused(tmp_path, tiny, capsys):
    adapter = tmp_path / "export"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "model_info.json").write_text(json.dumps({"base": "/elsewhere/model"}))
    code, _, _ = run_cli(tmp_path, overrides(tiny, f"task.reference_adapter={tmp_path}"))
    assert code == 2
    assert (
        "task.reference_adapter was trained on base '/elsewhere/model'" in capsys.readouterr().err
    )


@pytest.mark.parametrize("method", ["lora", "full"])
def test_reference_is_the_starting_model_and_stays_frozen(tiny, method):
    """LoRA: the adapter disabled; full fine-tuning: a frozen copy. A step moves only the policy."""
    from transformers import AutoModelForCausalLM

    from tunelab.config.validate import load_config
    from tunelab.run.build import build_data_and_module

    clear = ["~method.r", "~method.alpha"] if method == "full" else []
    _, config = load_config(overrides(tiny, f"method={method}", "optim.lr=1e-2", *clear))
    datamodule, module = build_data_and_module(config)
    batch = next(iter(datamodule.val_dataloader()))
    outputs = module.task.forward(module.model, batch)
    assert outputs.loss.item() == pytest.approx(math.log(2), abs=1e-6)
    optimizer = torch.optim.SGD([p for p in module.model.parameters() if p.requires_grad], lr=1.0)
    outputs.loss.backward()
    optimizer.step()
    with module.task.reference(module.model) as reference:
        after = logps_of(reference, batch)
    base = logps_of(AutoModelForCausalLM.from_pretrained(tiny[0]), batch)
    assert torch.allclose(after, base, atol=1e-5)  # the reference is still the base
    moved = module.task.forward(module.model, batch)
    assert moved.loss.item() < math.log(2) and moved.stats()["rewards/chosen"].abs().max() > 0


def with_precomputed_reference(args: list[str]) -> tuple[Any, Any, Any]:
    """A module moved off its reference; the loss on a plain batch; the batch with reference logps.

    The loss is computed (reference forward) before `ReferenceLogps` precomputes the reference
    log-probabilities into the loader, so the two losses must agree.
    """
    from callbacks.reference_logps import ReferenceLogps
    from tunelab.config.validate import load_config
    from tunelab.run.build import build_data_and_module

    _, config = load_config(args)
    datamodule, module = build_data_and_module(config)
    plain = next(iter(datamodule.val_dataloader()))
    with torch.no_grad():  # move the policy away from its reference
        for p in (p for p in module.model.parameters() if p.requires_grad):
            p.add_(torch.randn_like(p) * 0.05)
    expected = module.task.forward(module.model, plain)
    ReferenceLogps().on_fit_start(SimpleNamespace(datamodule=datamodule), module)
    batch = next(iter(datamodule.val_dataloader()))
    assert torch.equal(batch["input_ids"], plain["input_ids"])
    return module, expected, batch


@pytest.mark.parametrize("method", ["lora", "full"])
def test_precomputed_reference_logps_give_the_same_loss_and_free_the_reference(tiny, method):
    clear = ["~method.r", "~method.alpha"] if method == "full" else []
    args = overrides(tiny, f"method={method}", "task.precompute_reference=true", *clear)
    module, expected, batch = with_precomputed_reference(args)
    assert batch["reference_logps"].shape == (batch["labels"].shape[0],)
    found = module.task.forward(module.model, batch)
    assert found.loss.item() == pytest.approx(expected.loss.item(), abs=1e-5)
    assert found.loss.item() != pytest.approx(math.log(2), abs=1e-3)
    assert module.task._frozen is None  # full fine-tuning's copy is gone
