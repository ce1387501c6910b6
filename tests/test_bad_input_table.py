"""Every bad input a user can plausibly produce stops with one named error, never a traceback.

Each row goes through `run.py`'s `main` as a user would: the exit code is non-zero, stderr has an
`error:` line naming the field or the file, nothing prints a traceback, and no run folder is
left behind.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import tiny_overrides, write_intents
from decoder_helpers import build_tiny, qa_rows

import run as cli

Writer = Callable[[Path], None]  # writes the row's data under the data root


def csv(text: str, name: str = "train.csv") -> Writer:
    def write(root: Path) -> None:
        (root / "bad").mkdir(parents=True, exist_ok=True)
        (root / "bad" / name).write_text(text)

    return write


def raw(data: bytes, name: str = "train.csv") -> Writer:
    def write(root: Path) -> None:
        (root / "bad").mkdir(parents=True, exist_ok=True)
        (root / "bad" / name).write_bytes(data)

    return write


def rows(n: int = 40, **cells: str) -> str:
    """`text,label` CSV with `n` rows of 4 classes; `cells` put values in row 7 (text, label)."""
    lines = ["text,label"]
    for i in range(n):
        text, label = f"example number {i}", f"class_{i % 4}"
        if i == 7:
            text, label = cells.get("text", text), cells.get("label", label)
        lines.append(f"{text},{label}")
    return "\n".join(lines) + "\n"


def jsonl(records: list[dict], name: str = "train.jsonl") -> Writer:
    return csv("".join(json.dumps(r) + "\n" for r in records), name)


def parquet_cut(root: Path) -> None:
    import pandas as pd

    (root / "bad").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"text": ["a"] * 50, "label": ["x", "y"] * 25}).to_parquet(root / "p.parquet")
    (root / "bad" / "train.parquet").write_bytes((root / "p.parquet").read_bytes()[:300])


def split_files(train: str, test: str) -> Writer:
    def write(root: Path) -> None:
        csv(train)(root)
        csv(test, "test.csv")(root)

    return write


def mixed_formats(root: Path) -> None:
    csv(rows())(root)
    jsonl([{"text": "a", "label": "class_0"}], "test.jsonl")(root)


def nothing(root: Path) -> None:
    (root / "bad").mkdir(parents=True, exist_ok=True)


def qa(records: list[dict], name: str = "train.jsonl") -> Writer:
    return jsonl(records, name)


QA = qa_rows(30)
CLASSIFY = ("data=text_classification", "data.path=bad", "data.label_column=label")
INSTRUCT = ("data=instruction", "data.path=bad", "data.response_field=response")

# id, data writer, kind (classify/instruct/config), extra overrides, expected text in the error
CASES = [
    (
        "not_utf8",
        raw("text,label\ncaf\xe9 au lait,a\n".encode("latin-1") * 20),
        "classify",
        (),
        "train.csv",
    ),
    (
        "unbalanced_quote",
        csv(rows(20) + '"an unclosed quote,class_1\n' + rows(20)[11:]),
        "classify",
        (),
        "train.csv",
    ),
    ("binary_file", raw(bytes(range(256)) * 20), "classify", (), "train.csv"),
    (
        "truncated_jsonl",
        csv(json.dumps({"text": "a", "label": "x"}) + '\n{"text": "b", "la', "train.jsonl"),
        "classify",
        (),
        "train.jsonl",
    ),
    ("truncated_parquet", parquet_cut, "classify", (), "train.parquet"),
    ("empty_file", csv(""), "classify", (), "train.csv"),
    ("header_only", csv("text,label\n"), "classify", (), "no rows"),
    ("empty_text_cell", csv(rows(text="")), "classify", (), "empty text"),
    ("whitespace_text_cell", csv(rows(text="   ")), "classify", (), "empty text"),
    (
        "missing_text_value",
        jsonl([{"text": f"t {i}", "label": str(i % 2)} for i in range(30)] + [{"label": "1"}]),
        "classify",
        (),
        "empty text",
    ),
    ("empty_label_cell", csv(rows(label="")), "classify", (), "empty label"),
    ("whitespace_label_cell", csv(rows(label="  ")), "classify", (), "empty label"),
    (
        "empty_numeric_label",
        csv("text,label\n" + "".join(f"row {i},{'' if i == 5 else i % 3}\n" for i in range(30))),
        "classify",
        (),
        "empty label",
    ),
    (
        "mixed_label_types",
        jsonl([{"text": f"t {i}", "label": [1, "a"][i % 2]} for i in range(30)]),
        "classify",
        (),
        "train.jsonl",
    ),
    (
        "missing_label_column",
        csv(rows()),
        "classify",
        ("data.label_column=category",),
        "data.label_column",
    ),
    (
        "missing_text_column",
        csv(rows()),
        "classify",
        ("data.text_column=utterance",),
        "data.text_column",
    ),
    (
        "one_class",
        csv("text,label\n" + "".join(f"row {i},same\n" for i in range(30))),
        "classify",
        (),
        "one class",
    ),
    (
        "unseen_test_label",
        split_files(rows(), "text,label\nfoo,class_0\nbar,other\n"),
        "classify",
        (),
        "label 'other'",
    ),
    ("too_few_rows_to_carve", csv("text,label\na,x\nb,y\n"), "classify", (), "data.val_size"),
    (
        "test_carve_bigger_than_data",
        csv(rows(20)),
        "classify",
        ("data.test_size=30",),
        "data.test_size",
    ),
    ("missing_path", nothing, "classify", ("data.path=nowhere",), "data.path='nowhere'"),
    ("folder_without_train", csv(rows(), "other.csv"), "classify", (), "no train file"),
    ("mixed_split_formats", mixed_formats, "classify", (), "one format"),
    (
        "empty_instruction",
        qa([*QA[:5], {"instruction": "", "response": "r"}, *QA[5:]]),
        "instruct",
        (),
        "empty instruction in source row 5",
    ),
    (
        "missing_response",
        qa([*QA[:9], {"instruction": "q?"}, *QA[9:]]),
        "instruct",
        (),
        "empty response in source row 9",
    ),
    (
        "missing_instruction_column",
        qa(QA),
        "instruct",
        ("data.instruction_field=question",),
        "data.instruction_field",
    ),
    ("instruction_empty_file", csv("", "train.jsonl"), "instruct", (), "train.jsonl"),
    ("instruction_too_few_rows", qa(QA[:2]), "instruct", (), "data.val_size"),
    (
        "tracking_uri_not_a_database",
        csv(rows()),
        "classify",
        ("logger.tracking_uri=sqlite:///data_root/bad/train.csv",),
        "not an SQLite database",
    ),
    (
        "tracking_uri_missing_folder",
        csv(rows()),
        "classify",
        ("logger.tracking_uri=sqlite:///no/such/folder/mlflow.db",),
        "does not exist",
    ),
    (
        "tracking_server_unreachable",
        csv(rows()),
        "classify",
        ("logger.tracking_uri=http://127.0.0.1:9",),
        "cannot be reached",
    ),
    (
        "output_root_is_a_file",
        csv(rows()),
        "classify",
        ("output_root=data_root/bad/train.csv",),
        "output_root",
    ),
    ("max_epochs_zero", csv(rows()), "classify", ("trainer.max_epochs=0",), "trainer.max_epochs"),
    ("val_size_zero", csv(rows()), "classify", ("data.val_size=0",), "data.val_size"),
    (
        "target_outside_project",
        csv(rows()),
        "classify",
        ("method._target_=os.system",),
        "method._target_",
    ),
    (
        "config_override_not_a_model_setting",
        csv(rows()),
        "classify",
        ("+model.config_overrides.hiden_dropout=0.0",),
        "did you mean 'hidden_dropout_prob'",
    ),
    (
        "label_smoothing_for_a_decoder",
        qa(QA),
        "instruct",
        ("task.label_smoothing=0.1",),
        "task.label_smoothing: unknown key",
    ),
    ("unknown_experiment", nothing, "config", ("experiment=nosuch",), "experiment=nosuch"),
    ("gpu_recipe_on_cpu", nothing, "config", ("experiment=lora_mistral",), "trainer=cpu"),
    ("bare_command", nothing, "config", (), "no experiment given"),
]


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("bad_input_decoder") / "mistral")


def command(kind: str, root: Path, tiny_bert: Path, decoder: Path | None, extra) -> list[str]:
    extra = [e.replace("data_root", str(root)) for e in extra]
    if kind == "config":
        return [*extra, "logger.tracking_uri=sqlite:///mlflow.db"] if extra else []
    if kind == "classify":
        base = tiny_overrides(tiny_bert, root)
        args = ["experiment=quickstart", *base, *CLASSIFY]
    else:
        args = [
            "experiment=lora_tiny_mistral",
            f"model.name_or_path={decoder}",
            "model.max_length=64",
            f"data.root={root}",
            *INSTRUCT,
            "trainer.enable_progress_bar=false",
            "logger.tracking_uri=sqlite:///mlflow.db",
        ]
    return [*args, *extra]


@pytest.mark.parametrize(
    ("writer", "kind", "extra", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_one_named_error(
    workdir, tiny_bert, request, capsys, writer, kind, extra, expected
):
    root = workdir / "data_root"
    root.mkdir()
    writer(root)
    decoder = request.getfixturevalue("tiny_decoder") if kind == "instruct" else None
    code = cli.main(command(kind, root, tiny_bert, decoder, extra))
    out, err = capsys.readouterr()
    assert code != 0, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors, err
    assert expected in err, err
    assert "Traceback" not in out + err
    outputs = workdir / "outputs"
    assert not outputs.exists() or not any(p.is_dir() for p in outputs.rglob("*")), list(
        outputs.rglob("*")
    )


def test_integer_labels_map_to_the_values_present(workdir, tiny_bert):
    from datamodules.classification import ClassificationDataModule
    from datamodules.text_classification import TextClassification

    write_intents(workdir / "unused")
    folder = workdir / "ints"
    folder.mkdir()
    lines = "".join(f"row {i},{(1001, 2002, 3003)[i % 3]}\n" for i in range(60))
    (folder / "train.csv").write_text("text,label\n" + lines)
    data = TextClassification(
        _target_="datamodules.text_classification.TextClassification",
        name="ints",
        root=str(workdir),
        path="ints",
    )
    dm = ClassificationDataModule(data=data, tokenizer=str(tiny_bert), max_length=16, seed=42)
    dm.setup()
    assert dm.labels == ["1001", "2002", "3003"]  # a 3-class head, not 3,004
    assert set(dm.splits["train"]["labels"]) == {0, 1, 2}
