"""The data audit of preference pairs: duplicates, pairs that prefer nothing, reversed pairs,
prompts leaked across splits, the length bias; cleaning in a run; PubMedQA through its builder."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from decoder_helpers import build_tiny
from test_preference import overrides

import audit as audit_cli
from tunelab.audit import cli

SHARED = Path(os.environ.get("TUNELAB_DATA_DIR", "/work/shared/data"))
TOPICS = ("liver", "heart", "lung", "kidney", "skin", "bone", "eye", "ear", "blood", "brain")


def _pair(k: int) -> dict[str, str]:
    """A pair whose chosen answer is longer than the rejected one (a planted length bias)."""
    topic = TOPICS[k % len(TOPICS)]
    return {
        "prompt": f"Question {k}: what helps the {topic} recover after illness number {k}?",
        "chosen": f"Rest, water and a check-up for the {topic} within {k + 2} days help most.",
        "rejected": f"Nothing {k}.",
    }


def planted_rows() -> dict[str, list[dict[str, str]]]:
    """40 train pairs with 3 exact copies, 2 near copies, 1 empty, 2 chosen = rejected,
    1 reversed pair; validation/test with 2 and 1 prompts copied from train."""
    train = [_pair(k) for k in range(40)]
    train[5]["chosen"] = ""  # empty chosen
    train[6]["rejected"] = train[6]["chosen"]  # prefers nothing
    train[7]["rejected"] = train[7]["chosen"].upper() + "!"  # the same once normalised
    train += [dict(train[k]) for k in (10, 11, 12)]  # exact copies
    train += [{**train[k], "chosen": train[k]["chosen"] + " Ask."} for k in (20, 21)]  # near
    train.append({**train[30], "chosen": train[30]["rejected"], "rejected": train[30]["chosen"]})
    validation = [_pair(k) for k in range(100, 110)] + [dict(train[k]) for k in (1, 2)]
    test = [_pair(k) for k in range(200, 210)] + [{**train[3], "chosen": "Other.", "rejected": "x"}]
    return {"train": train, "validation": validation, "test": test}


@pytest.fixture(scope="module")
def pairs_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tiny Mistral, data root holding pairs/ with the planted faults)."""
    root = tmp_path_factory.mktemp("audit_pairs")
    (root / "pairs").mkdir()
    for split, rows in planted_rows().items():
        lines = "".join(json.dumps(row) + "\n" for row in rows)
        (root / "pairs" / f"{split}.jsonl").write_text(lines)
    return build_tiny(root / "mistral"), root


def args(pairs_root: tuple[Path, Path], *extra: str) -> list[str]:
    """The preference tests' run on the planted pairs, every train row kept."""
    return overrides(pairs_root, "data.max_train_samples=null", *extra)


def test_preference_audit_finds_each_planted_fault(pairs_root, tmp_path: Path, capsys):
    assert audit_cli.main(args(pairs_root, f"output={tmp_path}")) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "audit.json").read_text())
    assert result["kind"] == "preference" and result["label_issues"] == []
    assert result["rows"] == {"train": 46, "validation": 12, "test": 11}
    assert result["exact_duplicates"] == 3
    assert [(i, j) for i, j, _ in result_pairs(result, "near_duplicates")] == [(43, 20), (44, 21)]
    assert result["cross_split_leaks"] == 3  # two validation prompts, one test prompt
    assert result["label_conflicts"] == 1  # row 45 reverses row 30
    pairs = result["details"]["pairs"]
    bad = pairs["degenerate"]["train"]
    assert bad["empty_chosen"] == [5] and bad["chosen_is_rejected"] == [6, 7]
    assert result["degenerate_pairs"] == 3
    train = pairs["lengths"]["train"]
    assert train["chosen"]["mean"] > train["rejected"]["mean"] and train["longer_wins"] > 0.85
    assert pairs["biased"] == ["train", "validation", "test"]
    assert sorted(result["remove"]["conflicts"]) == [30, 45]
    assert result["remove"]["leaked"] == [1, 2, 3]
    assert "prefer nothing" in out and "length bias in train" in out
    report = (tmp_path / "audit.md").read_text()
    assert "## Preference pairs" in report and "(biased)" in report


def result_pairs(result: dict, key: str) -> list[tuple[int, int, float]]:
    """(row, same_as_row, similarity) of the train examples of `key`."""
    examples = result["details"][key]["train"]["examples"]
    return [(e["row"], e["same_as_row"], e["similarity"]) for e in examples]


def test_unbiased_pairs_are_not_flagged(pairs_root, tmp_path: Path):
    _, root = pairs_root
    rows = [_pair(k) for k in range(20)]
    for row in rows[::2]:  # half the pairs: the rejected answer is the longer one
        row["chosen"], row["rejected"] = row["rejected"].replace("Nothing", "Rest"), row["chosen"]
    (root / "even").mkdir()
    for split in ("train", "validation", "test"):
        (root / "even" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result, _ = cli.audit([*args(pairs_root, "data.path=even"), f"output={tmp_path}"])
    assert result["details"]["pairs"]["lengths"]["train"]["longer_wins"] == 0.5
    assert result["details"]["pairs"]["biased"] == [] and result["degenerate_pairs"] == 0


def test_cleaning_pairs_in_a_run_removes_the_audited_train_rows(pairs_root, tmp_path, caplog):
    """data.drop_* on preference data: the audit's train rows leave, the others are encoded."""
    from hydra.utils import get_class

    from tunelab.config.validate import load_config

    model, root = pairs_root
    rows = planted_rows()
    for split in rows:  # the run refuses pairs that prefer nothing: leave them out here
        rows[split] = [r for r in rows[split] if r["chosen"].strip().lower() != r["rejected"]
                       .strip().lower().rstrip("!") and r["chosen"]]  # fmt: skip
    (root / "clean_run").mkdir()
    for split, split_rows in rows.items():
        lines = "".join(json.dumps(r) + "\n" for r in split_rows)
        (root / "clean_run" / f"{split}.jsonl").write_text(lines)
    overrides = ["data.path=clean_run", "data.drop_duplicates=true", "data.drop_leaked=true"]
    reference, _ = cli.audit([*args(pairs_root, *overrides), f"output={tmp_path}"])
    _, run = load_config(args(pairs_root, *overrides, "data.drop_conflicts=true"))
    datamodule = get_class(run.data.datamodule)(
        data=run.data, tokenizer=str(model), max_length=64, seed=run.seed
    )
    with caplog.at_level(logging.WARNING):
        datamodule.setup("fit")
    removed = datamodule.audit["removed"]
    for name in ("duplicates", "leaked", "conflicts"):
        assert [r["row"] for r in removed[name]] == reference["remove"][name], name
        assert f"data.drop_{name}=true removed" in caplog.text
    dropped = set().union(*(reference["remove"][name] for name in removed))
    assert len(dropped) >= 3 + 2 + 3 + 2
    assert len(datamodule.splits["train"]) == len(rows["train"]) - len(dropped)
    assert len(datamodule.splits["test"]) == len(rows["test"])


def test_unpaired_kto_rows_are_audited_as_completions(pairs_root, tmp_path: Path):
    _, root = pairs_root
    rows = [
        {"prompt": p["prompt"], "completion": p[key], "label": key == "chosen"}
        for p in (_pair(k) for k in range(12))
        for key in ("chosen", "rejected")
    ]
    (root / "kto").mkdir()
    for split in ("train", "validation", "test"):
        (root / "kto" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result, _ = cli.audit(
        [
            *args(pairs_root, "data.path=kto", "data.unpaired=true", "task.loss=kto"),
            f"output={tmp_path}",
        ]
    )
    assert result["kind"] == "instruction"  # prompt -> completion
    balance = result["details"]["balance"]["train"]
    assert balance["counts"] == {"desirable": 12, "undesirable": 12}
    assert result["label_conflicts"] == 12  # each prompt with two completions
    assert result["cross_split_leaks"] == 2 * 24  # the same rows in every split


@pytest.mark.skipif(not (SHARED / "pubmedqa").is_dir(), reason="PubMedQA is not in the data root")
def test_pubmedqa_pairs_through_the_pairs_builder(pairs_root, tmp_path: Path):
    """The real PubMedQA pairs: one per PMID, chosen and rejected differ in the decision only."""
    model, _ = pairs_root
    result, folder = cli.audit(
        [
            "experiment=dpo_tiny_mistral",
            f"model.name_or_path={model}",
            "data=pubmedqa_pairs",
            f"data.root={SHARED}",
            "data.max_train_samples=null",
            f"output={tmp_path}",
        ]
    )
    assert result["kind"] == "preference"
    assert result["rows"] == {"train": 450, "validation": 50, "test": 500}
    assert result["exact_duplicates"] == result["cross_split_leaks"] == 0
    assert result["degenerate_pairs"] == 0 and result["label_conflicts"] == 0
    lengths = result["details"]["pairs"]["lengths"]["train"]
    assert abs(lengths["mean_difference"]) <= 2  # `Answer: yes` against `Answer: no` / `maybe`
    assert result["details"]["balance"]["train"]["classes"] == 3  # the gold decisions
    assert (folder / "audit.md").is_file()


@pytest.mark.slow
def test_a_dpo_run_with_data_audit_logs_the_report(pairs_root, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    import run as run_cli

    _, root = pairs_root
    rows = [_pair(k) for k in range(24)]
    (root / "dpo").mkdir()
    splits = {"train": rows[:16] + rows[:2], "validation": rows[16:20], "test": rows[20:]}
    for split, split_rows in splits.items():
        lines = "".join(json.dumps(r) + "\n" for r in split_rows)
        (root / "dpo" / f"{split}.jsonl").write_text(lines)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    extra = ["data.path=dpo", "data.audit=true", "data.drop_duplicates=true"]
    settings = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
    store = ["logger.tracking_uri=sqlite:///mlflow.db", "logger.log_model=false"]
    assert run_cli.main([*args(pairs_root, *extra), *settings, *store]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.metrics["data/removed_duplicates"] == 2
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "audit")}
    assert {"audit/audit.md", "audit/audit.json", "audit/removed.json"} <= logged
