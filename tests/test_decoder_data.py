"""Decoder data: exact response-only masks (plain, chat, packed), packed attention isolation,
MedQuAD and PubMedQA parsing, named data errors, and every decoder recipe validating."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from decoder_helpers import build_tiny, qa_rows, write_qa

from datamodules.instruction import InstructionDataModule
from datamodules.instruction_file import InstructionFile
from tunelab.base import prompting
from tunelab.base.errors import DataError

EXAMPLE = {"instruction": "What is gout ?", "input": "about the bone", "response": "A joint pain."}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_decoders")
    return {
        "mistral": build_tiny(root / "mistral"),
        "llama": build_tiny(root / "llama", arch="llama"),
        "plain": build_tiny(root / "plain", chat_template=False),
    }


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _trained(encoded: dict[str, list[int]]) -> list[int]:
    return [i for i, label in enumerate(encoded["labels"]) if label != prompting.IGNORE]


def test_plain_template_trains_exactly_the_response_and_eos(models):
    tokenizer = _tokenizer(models["plain"])
    assert not prompting.uses_chat_template(tokenizer, "auto")
    encoded = prompting.encode_example(tokenizer, EXAMPLE, 64, chat=False)
    prompt = "### Instruction:\nWhat is gout ?\n\n### Input:\nabout the bone\n\n### Response:\n"
    prompt_ids = [tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False).input_ids]
    response_ids = tokenizer("A joint pain.", add_special_tokens=False).input_ids
    assert encoded["input_ids"] == prompt_ids + response_ids + [tokenizer.eos_token_id]
    assert _trained(encoded) == list(range(len(prompt_ids), len(encoded["input_ids"])))
    trained_ids = [encoded["input_ids"][i] for i in _trained(encoded)]
    assert tokenizer.decode(trained_ids) == "A joint pain.</s>"


def test_chat_template_trains_exactly_the_assistant_reply(models):
    tokenizer = _tokenizer(models["mistral"])
    assert prompting.uses_chat_template(tokenizer, "auto")
    encoded = prompting.encode_example(tokenizer, EXAMPLE, 64, chat=True)
    ids, trained = encoded["input_ids"], _trained(encoded)
    assert trained == list(range(trained[0], len(ids)))  # one contiguous block at the end
    assert tokenizer.decode(ids[: trained[0]]) == (
        "<s>[INST] What is gout ?\n\nabout the bone [/INST]"
    )
    assert tokenizer.decode([ids[i] for i in trained]) == " A joint pain.</s>"
    assert ids.count(tokenizer.bos_token_id) == 1  # the template's bos, not a second one


def test_response_is_truncated_but_prompt_too_long_is_an_error(models):
    tokenizer = _tokenizer(models["mistral"])
    long_answer = {**EXAMPLE, "response": "joint pain " * 50}
    encoded = prompting.encode_example(tokenizer, long_answer, 40, chat=True)
    assert len(encoded["input_ids"]) == 40 and encoded["labels"][-1] != prompting.IGNORE
    with pytest.raises(DataError, match=r"longer than model\.max_length=8"):
        prompting.encode_example(tokenizer, EXAMPLE, 8, chat=True)


def test_packing_keeps_examples_whole_and_masks_exact(models):
    tokenizer = _tokenizer(models["mistral"])
    examples = [prompting.encode_example(tokenizer, r, 64, True) for r in qa_rows(6)]
    rows = prompting.pack(examples, 128)
    assert 1 < len(rows) < len(examples) and all(len(r["input_ids"]) <= 128 for r in rows)
    flat = [(r, start) for r in rows for start, p in enumerate(r["position_ids"]) if p == 0]
    assert len(flat) == len(examples)  # one position restart per example, none split
    for (row, start), example in zip(flat, examples, strict=True):
        n = len(example["input_ids"])
        assert row["input_ids"][start : start + n] == example["input_ids"]
        assert row["labels"][start : start + n] == example["labels"]
        assert row["position_ids"][start : start + n] == list(range(n))
    batch = prompting.collate(rows, tokenizer.pad_token_id)
    assert "attention_mask" not in batch and batch["use_cache"] is False
    short = len(rows[-1]["input_ids"])
    assert (batch["labels"][-1, short:] == prompting.IGNORE).all()


@pytest.mark.parametrize("arch", ["mistral", "llama"])
def test_packed_examples_cannot_attend_to_each_other(models, arch):
    from transformers import AutoModelForCausalLM

    tokenizer = _tokenizer(models[arch])
    model = AutoModelForCausalLM.from_pretrained(models[arch]).eval()
    examples = [prompting.encode_example(tokenizer, r, 64, True) for r in qa_rows(3)]
    [row] = prompting.pack(examples, 192)
    with torch.no_grad():
        packed = model(**{**prompting.collate([row], 0), "labels": None}).logits[0]
        start = 0
        for example in examples:
            alone = model(**{**prompting.collate([example], 0), "labels": None}).logits[0]
            n = len(example["input_ids"])
            torch.testing.assert_close(packed[start : start + n], alone, rtol=1e-4, atol=1e-5)
            start += n


def _datamodule(
    root: Path, model: Path, max_length: int = 64, **overrides
) -> InstructionDataModule:
    data = InstructionFile(
        _target_="datamodules.instruction_file.InstructionFile",
        name="instruction",
        root=str(root),
        path="qa",
        input_field="input",
        **overrides,
    )
    return InstructionDataModule(data=data, tokenizer=str(model), max_length=max_length, seed=42)


def test_bad_instruction_data_raises_named_errors(tmp_path, models):
    root = write_qa(tmp_path)
    with pytest.raises(DataError, match=r"column 'answer' \(data.response_field\) is missing"):
        _datamodule(root, models["mistral"], response_field="answer").setup()
    rows = [json.loads(line) for line in (root / "qa/train.jsonl").read_text().splitlines()]
    rows[5]["response"] = "   "
    (root / "qa/train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"empty response in source row 5 \(the train split\)"):
        _datamodule(root, models["mistral"]).setup()
    root = write_qa(tmp_path / "ok")
    with pytest.raises(DataError, match=r"source row 0 \(the train split\): the prompt is .* tok"):
        _datamodule(root, models["mistral"], max_length=10).setup()


def test_instruction_datamodule_batches_mask_prompt_and_padding(tmp_path, models):
    datamodule = _datamodule(write_qa(tmp_path), models["mistral"], batch_size=4)
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    trained = batch["labels"] != prompting.IGNORE
    assert (batch["attention_mask"][trained] == 1).all()  # padding is never trained
    assert (trained.sum(1) > 0).all() and (~trained).sum() > trained.sum() / 2
    [prompt] = datamodule.generation_prompts(1)
    assert prompt["prompt"].endswith("[/INST]") and prompt["reference"]


def _write_medquad(root: Path) -> None:
    for index in range(12):
        folder = root / "medquad" / ("5_NIDDK_QA" if index % 2 else "6_NINDS_QA")
        folder.mkdir(parents=True, exist_ok=True)
        pairs = "".join(
            f'<QAPair pid="{k}"><Question qid="{index}-{k}" qtype="information">What is '
            f"topic {index} ?</Question><Answer>Topic {index} is\n      &quot;rare&quot;  "
            f"case {k}.</Answer></QAPair>"
            for k in range(3)
        )
        (folder / f"{index:07d}_topic.xml").write_text(
            f'<?xml version="1.0"?><Document id="{index}"><Focus>Topic {index}</Focus>'
            f"<QAPairs>{pairs}<QAPair pid='9'><Question qid='x'>Empty ?</Question><Answer>"
            "</Answer></QAPair></QAPairs></Document>"
        )


def test_medquad_parses_xml_and_splits_by_document(tmp_path):
    from datamodules.medquad import MedQuAD

    _write_medquad(tmp_path)
    data = MedQuAD(
        _target_="datamodules.medquad.MedQuAD",
        name="medquad",
        root=str(tmp_path),
        val_size=0.25,
        test_size=0.25,
    )
    records = data.load(seed=0)
    assert sum(len(r) for r in records.values()) == 36  # empty answers skipped
    assert all(records[split] for split in ("train", "validation", "test"))
    topics = {s: {r["instruction"] for r in rows} for s, rows in records.items()}
    assert not topics["train"] & topics["test"] and not topics["train"] & topics["validation"]
    assert (
        records["train"][0]["response"].startswith("Topic")
        and '"rare" case 0.' in (records["train"][0]["response"])
    )
    assert data.load(seed=1) == records  # split by file-name hash, not by the seed
    assert records["train"][0]["row"].endswith("_topic.xml QAPair 0")


def test_pubmedqa_uses_test_pmids_and_never_the_reasoning_labels(tmp_path, models):
    from datamodules.pubmedqa import PubMedQA

    entries = {
        str(pmid): {
            "QUESTION": f"Does drug {pmid} work?",
            "CONTEXTS": ["We gave it.", "It helped."],
            "LABELS": ["METHODS", "RESULTS"],
            "LONG_ANSWER": f"Drug {pmid} helps.",
            "final_decision": "yes",
            "reasoning_required_pred": "LEAKEDREQUIRED",
            "reasoning_free_pred": "LEAKEDFREE",
            "MESHES": [],
            "YEAR": "2000",
        }
        for pmid in range(100, 120)
    }
    folder = tmp_path / "pubmedqa"
    folder.mkdir()
    (folder / "ori_pqal.json").write_text(json.dumps(entries))
    (folder / "test_ground_truth.json").write_text(json.dumps({"100": "yes", "101": "yes"}))
    data = PubMedQA(
        _target_="datamodules.pubmedqa.PubMedQA", name="pubmedqa", root=str(tmp_path), val_size=3
    )
    datamodule = InstructionDataModule(
        data=data, tokenizer=str(models["mistral"]), max_length=128, seed=42
    )
    datamodule.setup()
    sizes = {split: len(rows) for split, rows in datamodule.records.items()}
    assert sizes == {"train": 15, "validation": 3, "test": 2}
    assert {r["response"] for r in datamodule.records["test"]} == {
        "Drug 100 helps.\nAnswer: yes",
        "Drug 101 helps.\nAnswer: yes",
    }
    text = _tokenizer(models["mistral"]).decode(
        [t for rows in datamodule.splits.values() for row in rows for t in row["input_ids"]]
    )
    assert "METHODS: We gave it." in text and "LEAKED" not in text
    assert {r["row"] for r in datamodule.records["test"]} == {"PMID 100", "PMID 101"}


@pytest.mark.parametrize(
    "args",
    [
        ["experiment=lora_mistral"],
        ["experiment=qlora_mistral"],
        ["experiment=lora_tiny_mistral"],
        ["experiment=qlora_tiny_mistral"],
        ["experiment=lora_tiny_mistral", "model=tiny_llama", "data=pubmedqa"],
        [
            "method=full",
            "model=tiny_llama",
            "data=instruction",
            "data.path=qa.jsonl",
            "task=causal_lm",
        ],
        ["experiment=quickstart", "method=lora", "model.quantize=int8"],
    ],
)
def test_decoder_recipes_compose_and_validate(args):
    from tunelab.config.validate import load_config

    _, run = load_config(args)
    assert run.method.name in ("lora", "qlora", "full")
    if run.task.name == "causal_lm":
        assert run.data.name in ("medquad", "pubmedqa", "instruction")


def test_bad_decoder_configs_are_rejected_before_anything_loads():
    from tunelab.base.errors import ConfigError
    from tunelab.config.validate import load_config

    with pytest.raises(ConfigError, match=r"model\.quantize"):
        load_config(["experiment=qlora_tiny_mistral", "model.quantize=nf3"])
    with pytest.raises(ConfigError, match=r"is instruction data but .* add task=causal_lm"):
        load_config(["experiment=quickstart", "data=medquad"])
    with pytest.raises(ConfigError, match=r"data\.template"):
        load_config(["experiment=lora_tiny_mistral", "data.template=alpaca"])


def test_grouped_training_batches_cover_every_row_once_with_less_padding(tmp_path, models):
    def padding_and_rows(group_by_length: bool) -> tuple[int, list[list[int]]]:
        datamodule = _datamodule(
            write_qa(tmp_path / str(group_by_length), n_train=160),  # grouping needs >= 16 rows
            models["mistral"],
            batch_size=4,
            group_by_length=group_by_length,
        )
        datamodule.setup()
        batches = list(datamodule.train_dataloader())
        padding = sum(int((b["attention_mask"] == 0).sum()) for b in batches)
        rows = [
            ids[m.bool()].tolist()
            for b in batches
            for ids, m in zip(b["input_ids"], b["attention_mask"], strict=True)
        ]
        return padding, rows

    grouped, grouped_rows = padding_and_rows(True)
    plain, plain_rows = padding_and_rows(False)
    assert sorted(grouped_rows) == sorted(plain_rows)  # the same rows, each once
    assert grouped < plain / 3
