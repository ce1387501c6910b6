"""Tiny decoder fixtures shared by the `test_decoder_*` files: QA data and a tiny Mistral."""

from __future__ import annotations

import json
from pathlib import Path

QUESTIONS = [
    ("What is diabetes ?", "Diabetes is a disease in which blood sugar is too high."),
    ("How to treat migraine ?", "Rest in a dark room and take pain medicine early."),
    ("What causes kidney stones ?", "Stones form when urine holds too much calcium or salt."),
    ("Who gets gout ?", "Gout is most common in men and in people who eat much red meat."),
    ("What are the symptoms of anemia ?", "Tiredness, pale skin and shortness of breath."),
    ("How is epilepsy diagnosed ?", "A doctor records brain waves with an EEG test."),
    ("What is celiac disease ?", "An immune reaction to gluten that damages the small bowel."),
    ("How to prevent stroke ?", "Control blood pressure, stop smoking and stay active."),
]
TOPICS = ["liver", "heart", "nerve", "skin", "bone", "lung", "eye", "blood"]


def qa_rows(n: int, offset: int = 0) -> list[dict[str, str]]:
    """`n` short, distinct instruction -> response rows (keys instruction, input, response)."""
    rows = []
    for i in range(offset, offset + n):
        question, answer = QUESTIONS[i % len(QUESTIONS)]
        topic = TOPICS[(i // len(QUESTIONS)) % len(TOPICS)]
        rows.append({"instruction": question, "input": f"about the {topic}", "response": answer})
    return rows


def write_qa(folder: Path, n_train: int = 16) -> Path:
    """`folder/qa/{train,validation,test}.jsonl`; returns the data root `folder`."""
    target = folder / "qa"
    target.mkdir(parents=True, exist_ok=True)
    splits = {"train": qa_rows(n_train), "validation": qa_rows(4, 3), "test": qa_rows(4, 5)}
    for split, rows in splits.items():
        with open(target / f"{split}.jsonl", "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    return folder


def corpus() -> list[str]:
    """Text the tiny tokenizer is trained on."""
    texts = [f"[INST] {q}\n\nabout the {t} [/INST] {a}" for q, a in QUESTIONS for t in TOPICS]
    return texts * 20 + ["### Instruction: ### Input: ### Response:"] * 20


def build_tiny(folder: Path, arch: str = "mistral", chat_template: bool = True, **config) -> Path:
    """A tiny random-init decoder through the same builder as `python -m tools.tiny_models`."""
    from tools.tiny_models import build_tiny_decoder

    return build_tiny_decoder(folder, corpus(), arch, 400, chat_template=chat_template, **config)


def decoder_overrides(model: Path, data_root: Path, *extra: str) -> list[str]:
    """Overrides that make a decoder experiment fit the 16 tiny QA rows in seconds."""
    return [
        f"model.name_or_path={model}",
        "model.max_length=64",
        "data=instruction",
        f"data.root={data_root}",
        "data.path=qa",
        "data.input_field=input",
        "data.batch_size=8",
        "data.packing=false",
        "data.max_train_samples=null",
        "optim.warmup_ratio=0",
        "optim.scheduler=constant",
        "trainer.max_epochs=30",
        "trainer.check_val_every_n_epoch=10",
        "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0",
        "trainer.log_every_n_steps=1",
        "logger.tracking_uri=sqlite:///mlflow.db",
        *extra,
    ]
