"""`compare.py`: several methods on one recipe and a user's CSV, into one MLflow parent run."""

from __future__ import annotations

import pytest
from conftest import tiny_overrides
from mlflow import MlflowClient
from omegaconf import OmegaConf

import compare as cli
from tunelab.base.errors import ConfigError
from tunelab.run.compare import method_args, parse_args, read_table, recipe_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_switching_method_drops_the_recipe_keys_the_new_method_lacks():
    plan = parse_args(["experiment=quickstart", "methods=[full,lora,freeze]", "seed=3"])
    assert plan.methods == ["full", "lora", "freeze"] and plan.shared[-1] == "seed=3"
    # quickstart is a LoRA recipe (r, alpha, dropout, target_modules): kept for lora only;
    # adapter has keys of the same names (dropout, target_modules) with other meanings
    assert method_args(plan, "lora")[-1] == "method=lora"
    stale = ["~method.alpha", "~method.dropout", "~method.r", "~method.target_modules"]
    for method in ("full", "adapter"):
        dropped = [a for a in method_args(plan, method) if a.startswith("~")]
        assert sorted(dropped) == stale
    assert recipe_method(OmegaConf.create({"defaults": ["_self_"]})) == "lora"  # root default


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["methods=[full,lora]"], "experiment=: required"),
        (["experiment=quickstart", "methods=[lora]"], "two or more methods"),
        (["experiment=quickstart", "methods=[full,lorra]"], "unknown method 'lorra'"),
        (["experiment=quickstart", "methods=[full,lora]", "method=lora"], "methods=[...]"),
    ],
)
def test_bad_comparisons_are_config_errors(args, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_args(args)


def test_a_typo_fails_before_any_method_trains(workdir, capsys):
    code = cli.main(["experiment=quickstart", "methods=[full,lora]", "optim.lrr=1e-3"])
    assert code == 2 and "[full] optim.lrr" in capsys.readouterr().err
    assert not (workdir / "mlflow.db").exists()


@pytest.mark.slow
def test_four_methods_on_a_csv_into_one_parent_run(tiny_bert, intent_data, workdir):
    args = [
        "experiment=quickstart",
        "methods=[full,freeze,lora,adapter]",
        *tiny_overrides(tiny_bert, intent_data, "trainer.max_epochs=1", "export.save_model=false"),
    ]
    assert cli.main(args) == 0
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    [parent] = [r for r in runs if r.data.tags.get("compare.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["method"] for r in children) == ["adapter", "freeze", "full", "lora"]
    assert {r.data.params["seed"] for r in children} == {"42"}
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"compare.csv", "compare.md", "score_vs_params.png"} <= artifacts
    [folder] = (workdir / "outputs").glob("compare_quickstart/*")
    rows = {r["method"]: r for r in read_table(folder / "compare.csv")}
    assert rows["full"]["trainable_params"] > rows["freeze"]["trainable_params"]
    for method, row in rows.items():
        child = next(r for r in children if r.data.tags["method"] == method)
        assert row["score"] == pytest.approx(child.data.metrics["test/acc"])
        assert row["peak_memory_mb"] > 0 and row["train_samples_per_s"] > 0
    assert "| full |" in (folder / "compare.md").read_text()
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    metrics = client.get_run(parent.info.run_id).data.metrics
    assert metrics["compare/lora/test/acc"] == pytest.approx(rows["lora"]["score"])


@pytest.mark.slow
def test_tune_lr_trains_each_method_at_its_best_validation_lr(tiny_bert, intent_data, workdir):
    import optuna

    args = ["experiment=quickstart", "methods=[full,lora]", "tune_lr=true", "sweep.n_trials=2"]
    args += tiny_overrides(tiny_bert, intent_data, "trainer.max_epochs=1")
    assert cli.main([*args, "export.save_model=false"]) == 0
    [folder] = (workdir / "outputs").glob("compare_quickstart/*")
    rows = {r["method"]: r for r in read_table(folder / "compare.csv")}
    for method, row in rows.items():
        [summary] = [
            s
            for s in optuna.get_all_study_summaries("sqlite:///optuna.db")
            if s.study_name.endswith(f"_{method}_lr")
        ]
        study = optuna.load_study(study_name=summary.study_name, storage="sqlite:///optuna.db")
        assert row["lr"] == pytest.approx(study.best_params["optim.lr"])


def test_the_table_flags_a_method_run_at_another_methods_learning_rate(tmp_path):
    from tunelab.run import compare_report
    from tunelab.run.compare import lr_source, parse_args

    plan = parse_args(["experiment=quickstart", "methods=[full,lora]"])
    assert lr_source(plan, "lora") == "recipe"  # the quickstart recipe is LoRA's
    assert lr_source(plan, "full") == "recipe (lora's)"
    assert lr_source(parse_args([*plan.shared, "methods=[full,lora]", "tune_lr=true"]), "full") == (
        "tuned"
    )
    assert lr_source(
        parse_args([*plan.shared, "methods=[full,lora]", "optim.lr=1e-4"]), "full"
    ) == ("given")
    rows = [
        {"method": m, "lr": 5e-3, "lr_from": lr_source(plan, m), "score": s, "error": ""}
        for m, s in (("full", 0.013), ("lora", 0.73))
    ]
    compare_report.write(rows, "test/acc", plan, tmp_path)
    text = (tmp_path / "compare.md").read_text()
    assert "| full | 0.005 | recipe (lora's) |" in text
    assert "full ran at the recipe's learning rate, which was set for lora" in text
    assert "tune_lr=true" in text
    assert read_table(tmp_path / "compare.csv")[0]["lr_from"] == "recipe (lora's)"
