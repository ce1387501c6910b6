"""The data audit on a copy of BANKING77 with planted faults; cleaning settings; bad input."""

from __future__ import annotations

import csv
import json
import logging
import random
from pathlib import Path

import pytest
from conftest import tiny_overrides
from mlflow import MlflowClient

import audit as audit_cli
import run as run_cli
from tunelab.audit import cli

BANKING77 = Path("/work/shared/data/banking77")
DUPLICATES, LEAKS, FLIPS, ONE_WORD, LONG = 200, 40, 60, 20, 15
WORDS = [
    *("card", "refund", "pin", "atm", "transfer", "topup", "cash", "fee", "rate", "limit"),
    *("hello", "help", "euro", "pending", "declined", "account", "app", "visa", "wallet", "why"),
]


def _read(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="") as handle:
        return [(row["text"], row["category"]) for row in csv.DictReader(handle)]


def _write(folder: Path, splits: dict[str, list[tuple[str, str]]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        with open(folder / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "category"])
            writer.writerows(rows)


def plant(root: Path) -> dict[str, list[int]]:
    """`root/clean` (a BANKING77 sample) and `root/planted` (the same with faults); the rows."""
    if not BANKING77.is_dir():
        pytest.skip("BANKING77 is not in /work/shared/data")
    rng = random.Random(0)
    pool, test = _read(BANKING77 / "train.csv"), _read(BANKING77 / "test.csv")
    rng.shuffle(pool)
    rng.shuffle(test)
    train, validation, test, spare = pool[:1200], pool[1200:1400], test[:300], pool[1400:1600]
    _write(root / "clean", {"train": train, "validation": validation, "test": test})
    labels = sorted({label for _, label in pool})
    flipped = [(t, rng.choice([x for x in labels if x != y])) for t, y in train[:FLIPS]]
    planted = flipped + train[FLIPS:] + train[100 : 100 + DUPLICATES]
    planted += [(word, labels[k]) for k, word in enumerate(WORDS)]
    planted += [
        (" ".join(t for t, _ in spare[10 * k : 10 * k + 10]), labels[k]) for k in range(LONG)
    ]
    test = test + train[300 : 300 + LEAKS]
    _write(root / "planted", {"train": planted, "validation": validation, "test": test})
    n = len(train)
    return {"flipped": list(range(FLIPS)), "copies": list(range(n, n + DUPLICATES))}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[int]]]:
    root = tmp_path_factory.mktemp("audit_data")
    return root, plant(root)


def args(root: Path, model: Path | None, path: str, *extra: str) -> list[str]:
    """audit.py arguments for the copy in `root/path` (the default MiniLM when model is None)."""
    model_arg = [f"model.name_or_path={model}"] if model else []
    return [
        "experiment=quickstart",
        *model_arg,
        "model.max_length=64",
        "data=text_classification",
        f"data.root={root}",
        f"data.path={path}",
        "data.label_column=category",
        *extra,
    ]


@pytest.fixture(scope="module")
def audits(planted, tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory):
    """The audit (label model off) of the clean sample and of the planted copy."""
    root, _ = planted
    out = tmp_path_factory.mktemp("audits")
    found = {}
    for name in ("clean", "planted"):
        extra = ["audit.label_model=false", f"output={out / name}"]
        found[name], folder = cli.audit(args(root, tiny_bert, name, *extra))
        assert folder == out / name
    return found


def test_audit_counts_each_planted_fault(audits):
    clean, planted = audits["clean"], audits["planted"]
    added = lambda key: planted[key] - clean[key]  # noqa: E731
    assert abs(added("exact_duplicates") - DUPLICATES) <= 3
    assert abs(added("cross_split_leaks") - LEAKS) <= 3
    assert added("short_texts") == ONE_WORD
    assert LONG <= added("truncated_rows") <= LONG + 3  # copies of a long row are long too
    assert abs(added("near_duplicates")) <= 3  # exact copies are not counted twice
    assert planted["rows"] == {
        "train": 1200 + DUPLICATES + ONE_WORD + LONG,
        "validation": 200,
        "test": 300 + LEAKS,
    }
    leaked = planted["details"]["leaks"]["test"]["examples"]
    assert leaked and all(e["text"] == e["train_text"] or e["train_rows"] for e in leaked)


def test_audit_writes_report_json_and_plots(audits, planted, tmp_path: Path, capsys):
    root, _ = planted
    code = audit_cli.main(
        args(
            root,
            None,
            "planted",
            "audit.label_model=false",
            "audit.near_threshold=0.8",
            f"output={tmp_path}",
        )
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and lines[-1] == str(tmp_path)  # the folder printed last
    assert any("exact duplicates" in line for line in lines)
    result = json.loads((tmp_path / "audit.json").read_text())
    for key in (
        "exact_duplicates",
        "near_duplicates",
        "cross_split_leaks",
        "label_conflicts",
        "truncated_rows",
    ):
        assert isinstance(result[key], int)
    assert result["label_issues"] == [] and result["settings"]["near_threshold"] == 0.8
    assert result["near_duplicates"] >= audits["planted"]["near_duplicates"]  # lower threshold
    assert {"audit.md", "lengths.png", "balance.png"} <= {p.name for p in tmp_path.iterdir()}
    assert "## Leaks" in (tmp_path / "audit.md").read_text()


@pytest.mark.slow
def test_label_model_finds_most_flipped_labels(planted, tmp_path: Path):
    """Real MiniLM embeddings + logistic regression + cleanlab."""
    root, rows = planted
    result, _ = cli.audit(args(root, None, "planted", f"output={tmp_path}"))
    suspects = [issue["row"] for issue in result["label_issues"]]
    found = set(suspects[: 2 * FLIPS]) & set(rows["flipped"])
    assert len(found) >= 0.7 * FLIPS, (len(found), len(suspects))
    issue = result["label_issues"][0]
    assert {"split", "row", "text", "given", "suggested"} <= set(issue)
    assert issue["given"] != issue["suggested"]


def _run(folder: Path, overrides: list[str]) -> tuple[MlflowClient, object]:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert run_cli.main(overrides) == 0
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    [experiment] = [e for e in client.search_experiments() if e.name == "planted"]  # the file's
    [run] = client.search_runs([experiment.experiment_id])
    return client, run


def _datamodule(root: Path, tiny_bert: Path, *extra: str):
    from hydra.utils import get_class

    from tunelab.config.validate import load_config

    _, run = load_config(args(root, tiny_bert, "planted", *extra))
    return get_class(run.data.datamodule)(
        data=run.data, tokenizer=str(tiny_bert), max_length=64, seed=run.seed
    )


def test_cleaning_removes_the_audited_train_rows_only(planted, tiny_bert, audits, caplog):
    """drop_duplicates / drop_leaked / drop_conflicts remove exactly the audit's train rows."""
    root, _ = planted
    names = ("duplicates", "leaked", "conflicts")
    datamodule = _datamodule(root, tiny_bert, *(f"data.drop_{name}=true" for name in names))
    with caplog.at_level(logging.WARNING):
        datamodule.setup("fit")
    expected = audits["planted"]["remove"]
    removed = datamodule.audit["removed"]
    assert sorted(removed) == sorted(names)
    for name in names:
        assert [row["row"] for row in removed[name]] == expected[name], name
        assert f"data.drop_{name}=true removed {len(expected[name])} train rows" in caplog.text
    dropped = set().union(*(expected[name] for name in names))
    rows = audits["planted"]["rows"]
    assert len(datamodule.splits["train"]) == rows["train"] - len(dropped)
    assert len(datamodule.splits["test"]) == rows["test"]
    assert "also appear in train" not in caplog.text  # leaks dropped: no warning


@pytest.mark.slow
def test_cleaning_settings_remove_what_they_say_and_log_it(
    planted, tiny_bert, intent_data, tmp_path
):
    root, _ = planted
    reference, _ = cli.audit(args(root, tiny_bert, "planted", f"output={tmp_path / 'ref'}"))
    drops = [
        f"data.drop_{name}=true" for name in ("duplicates", "leaked", "conflicts", "label_issues")
    ]
    overrides = [
        "experiment=quickstart",
        *tiny_overrides(tiny_bert, intent_data),
        *args(root, tiny_bert, "planted")[1:],
        "data.audit=true",
        *drops,
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "export.save_model=false",
    ]
    client, run = _run(tmp_path, overrides)
    removed = json.loads(
        Path(
            client.download_artifacts(run.info.run_id, "audit/removed.json", str(tmp_path))
        ).read_text()
    )
    dropped = set()
    for name, expected in reference["remove"].items():
        assert [r["row"] for r in removed[name]] == expected, name
        assert run.data.metrics[f"data/removed_{name}"] == len(expected)
        dropped |= set(expected)
    assert len(removed["duplicates"]) >= DUPLICATES and len(removed["leaked"]) >= LEAKS
    inputs = {
        i.dataset.name: json.loads(i.dataset.profile)["num_rows"] for i in run.inputs.dataset_inputs
    }
    assert inputs["text_classification-train"] == reference["rows"]["train"] - len(dropped)
    assert inputs["text_classification-test"] == reference["rows"]["test"]  # eval splits kept
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "audit")}
    assert {"audit/audit.md", "audit/audit.json", "audit/lengths.png"} <= logged


def test_a_leaking_run_warns_once_with_the_count(planted, tiny_bert, caplog):
    from tunelab.base.audit import duplicates

    root, _ = planted
    datamodule = _datamodule(root, tiny_bert)
    leaks = sum(map(len, duplicates.exact_leaks(datamodule.view_for_audit()).values()))
    with caplog.at_level(logging.WARNING):
        datamodule.setup("fit")
    lines = [r.getMessage() for r in caplog.records if "also appear in train" in r.getMessage()]
    assert leaks >= LEAKS and lines == [lines[0]] and f": {leaks} validation/test rows" in lines[0]
    assert len(datamodule.splits["train"]) == 1200 + DUPLICATES + ONE_WORD + LONG  # untouched


@pytest.mark.parametrize(
    ("extra", "code", "says"),
    [
        (["experiment=no_such_recipe"], 2, "unknown experiment"),
        (["data.path=missing_folder"], 1, "missing_folder"),
        (["audit.near_treshold=0.5"], 2, "did you mean 'audit.near_threshold'"),
        (["audit.near_threshold=2"], 2, "audit.near_threshold"),
    ],
)
def test_bad_input_is_one_error_without_traceback(planted, tiny_bert, extra, code, says, capsys):
    root, _ = planted
    assert audit_cli.main([*args(root, tiny_bert, "planted"), *extra]) == code
    err = capsys.readouterr().err
    assert "error:" in err and says in err and "Traceback" not in err


def test_instruction_data_findings(tmp_path: Path):
    """Empty and templated responses, a prompt with two answers, a leak, a prompt too long."""
    from decoder_helpers import build_tiny

    rows = [
        {
            "instruction": f"What helps with problem {k} of the {t}?",
            "input": "",
            "response": f"Rest {k} {t}",
        }
        for k in range(6)
        for t in ("liver", "heart")
    ]
    rows[0]["response"] = ""  # empty
    for row in rows[1:6]:
        row["response"] = "Please ask your doctor."  # templated: one answer, five prompts
    rows.append({**rows[8], "response": "Something else entirely"})  # same prompt, other answer
    rows.append(
        {"instruction": "Explain " + "the long history " * 60, "input": "", "response": "ok"}
    )
    test = [dict(rows[10]), {"instruction": "A new question?", "input": "", "response": "New."}]
    folder = tmp_path / "qa"
    folder.mkdir()
    for split, split_rows in (("train", rows), ("validation", test[1:]), ("test", test)):
        with open(folder / f"{split}.jsonl", "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in split_rows)
    model = build_tiny(tmp_path / "mistral")
    result, _ = cli.audit(
        [
            "experiment=lora_tiny_mistral",
            f"model.name_or_path={model}",
            "model.max_length=64",
            "data=instruction",
            f"data.root={tmp_path}",
            "data.path=qa",
            "data.input_field=input",
            f"output={tmp_path / 'out'}",
        ]
    )
    responses = result["details"]["responses"]
    assert result["kind"] == "instruction" and result["label_issues"] == []
    assert responses["empty"]["train"] == [0]
    assert responses["templated"]["train"] == [1, 2, 3, 4, 5]
    assert result["label_conflicts"] == 1  # the prompt repeated with another answer
    assert result["cross_split_leaks"] == 1  # the train row copied into test
    assert result["details"]["lengths"]["train"]["no_room"] == [len(rows) - 1]
