"""Config composition and validation: every recipe is valid, every bad input is named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import run as cli
from tunelab.base.data_root import CANDIDATES, data_root
from tunelab.base.errors import ConfigError
from tunelab.config.compose import GROUP_DIRS, REPO_ROOT, available
from tunelab.config.validate import load_config
from tunelab.tracking.run_info import run_name

EXPERIMENTS = available("experiment")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_validates(name: str):
    cfg, run = load_config([f"experiment={name}"])
    assert run.name == cfg.name
    first_line = (GROUP_DIRS["experiment"] / f"{name}.yaml").read_text().splitlines()[0]
    assert first_line.startswith(f"# python run.py experiment={name}")


def test_overrides_reach_every_group():
    _, run = load_config(
        [
            "experiment=lora_minilm_banking77",
            "method.r=16",
            "optim.lr=3e-4",
            "trainer.max_epochs=2",
            "seed=1",
            "data.val_size=200",
        ]
    )
    assert run.method.r == 16 and run.optim.lr == 3e-4
    assert run.trainer.max_epochs == 2 and run.seed == 1 and run.data.val_size == 200


def test_mlflow_uri_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    _, run = load_config(["experiment=quickstart"])
    assert run.logger.tracking_uri == "http://tracking.example:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    _, run = load_config(["experiment=quickstart"])
    assert run.logger.tracking_uri == "sqlite:///mlflow.db"


def test_data_root_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TUNELAB_DATA_DIR", "/srv/domain-data")
    _, run = load_config(["experiment=quickstart"])
    assert run.data.root == "/srv/domain-data"


def test_without_the_variable_the_data_root_is_found_beside_the_repository(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.delenv("TUNELAB_DATA_DIR", raising=False)
    _, run = load_config(["experiment=quickstart"])
    assert run.data.root == data_root()
    expected = next((p for p in CANDIDATES if p.is_dir()), CANDIDATES[0])
    assert Path(run.data.root) == expected


def problems_of(args: list[str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(args)
    return caught.value.problems


def test_one_error_lists_every_problem_with_its_fix():
    problems = problems_of(
        [
            "experiment=quickstart",
            "method.rr=4",
            "optim.lrr=1e-3",
            "method.r=-1",
            "method.dropout=abc",
            "trainer.max_epochs=two",
            "model.name_or_path=./no/such/folder",
        ]
    )
    text = "\n".join(problems)
    assert len(problems) == 6, text
    assert "method.rr: unknown key (did you mean 'method.r'?)" in text
    assert "optim.lrr: unknown key (did you mean 'optim.lr'?)" in text
    assert "method.r: Input should be greater than 0 (got -1)" in text
    assert "method.dropout:" in text and "'abc'" in text
    assert "trainer.max_epochs:" in text and "'two'" in text
    assert "model.name_or_path: local folder './no/such/folder' does not exist" in text


def test_unknown_names_list_the_available_ones():
    problems = problems_of(["experiment=quickstrat", "method=lorra", "data=bankin77"])
    assert problems[0].startswith(
        "experiment=quickstrat: unknown experiment (did you mean 'quickstart'?)"
    )
    assert "available: " + ", ".join(EXPERIMENTS) in problems[0]
    assert "method=lorra: unknown method (did you mean 'lora'?)" in problems[1]
    assert "data=bankin77: unknown data (did you mean 'banking77'?)" in problems[2]


def test_added_key_outside_the_schema_is_rejected():
    [problem] = problems_of(["experiment=quickstart", "+method.rank=4"])
    assert problem == (
        "method.rank: unknown key; valid keys: "
        "_target_, alpha, dropout, name, r, target_modules, use_dora"
    )


def test_wrong_literal_and_task_mismatch():
    problems = problems_of(["experiment=quickstart", "trainer.precision=bf17", "task=causal_lm"])
    text = "\n".join(problems)
    assert "trainer.precision:" in text and "'bf17'" in text
    assert "data=banking77 is classification data but task=causal_lm reads instruction" in text


def test_a_recipe_switched_to_another_method_names_the_keys_to_clear():
    problems = problems_of(["experiment=lora_minilm_banking77", "method=ia3"])
    keys = ["r", "alpha", "dropout", "target_modules"]
    assert len(problems) == len(keys), problems
    for key in keys:
        [problem] = [p for p in problems if p.startswith(f"method.{key}:")]
        assert "set by experiment=lora_minilm_banking77" in problem
        assert f"clear it with ~method.{key}" in problem
    cleared = ["~method.r", "~method.alpha", "~method.dropout", "~method.target_modules"]
    _, run = load_config(["experiment=lora_minilm_banking77", "method=ia3", *cleared])
    assert run.method.name == "ia3" and run.method.target_modules is None


def test_target_outside_the_project_is_refused():
    [problem] = problems_of(["experiment=quickstart", "method._target_=os.system"])
    assert "outside this project's method package (modules/)" in problem


def test_defaults_live_in_the_config_classes_only():
    """A method or dataset YAML sets `_target_`, `name` and nothing that equals a class default."""
    from omegaconf import OmegaConf

    from tunelab.config.plugins import GROUP_SCHEMAS, locate_plugin

    for group in [g for g in GROUP_DIRS if g not in ("experiment", "sweep")]:
        for name in available(group):
            raw = OmegaConf.to_container(OmegaConf.load(GROUP_DIRS[group] / f"{name}.yaml")) or {}
            cls = GROUP_SCHEMAS.get(group) or locate_plugin(group, raw["_target_"])
            for key, value in raw.items():
                field = cls.model_fields.get(key)
                if field is not None and not field.is_required() and key != "name":
                    default = field.get_default(call_default_factory=True)
                    default = list(default) if isinstance(default, tuple) else default
                    assert value != default, f"{group}/{name}.yaml repeats {key}={value!r}"


def test_cli_reports_config_errors_without_traceback(capsys: pytest.CaptureFixture):
    assert cli.main(["experiment=quickstart", "method.rr=4"]) == 2
    err = capsys.readouterr().err
    assert "method.rr: unknown key" in err and "Traceback" not in err


def test_help_and_validation_import_nothing_heavy():
    code = (
        "import sys, run; run.main(['--help']);"
        "from tunelab.config.validate import load_config; load_config(['experiment=quickstart']);"
        "heavy = [m for m in ('torch', 'lightning', 'transformers', 'mlflow', 'peft') "
        "if m in sys.modules]; print('HEAVY', heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "quickstart" in out and "lora_minilm_banking77" in out
    assert out.strip().endswith("HEAVY []")


def test_help_shows_each_description_whole():
    text = " ".join(cli.describe().split())  # wrapped lines joined again
    assert "(the answer to the question asked over another answer on the same focus)" in text
    assert "label-smoothed. Chosen on validation among 15 candidates, tested once" in text


def _args_for(group: str, option: str) -> list[str]:
    """A command line selecting `group=option` on the root defaults, with what it requires."""
    from omegaconf import OmegaConf

    from tunelab.config.plugins import locate_plugin

    args = [f"{group}={option}"]
    raw = OmegaConf.to_container(OmegaConf.load(GROUP_DIRS[group] / f"{option}.yaml"))
    decoder_data = {
        "instruction": ("medquad", "causal_lm"),
        "preference": ("medquad_pairs", "preference"),
    }
    if (
        group == "data"
        and (family := locate_plugin("data", raw["_target_"]).family) in decoder_data
    ):
        args += ["model=tiny_mistral", f"task={decoder_data[family][1]}"]
    if group == "model" and option in ("tiny_mistral", "tiny_llama", "mistral_7b"):
        args += ["data=medquad", "task=causal_lm"]
    reads = locate_plugin("task", raw["_target_"]).data_family if group == "task" else ""
    if reads in decoder_data:
        args += [f"data={decoder_data[reads][0]}", "model=tiny_mistral"]
    if raw.get("path") == "???":
        args.append("data.path=somewhere.csv")
    if group == "method" and "teacher" in locate_plugin("method", raw["_target_"]).model_fields:
        args.append("method.teacher=outputs/teacher/export")
    return args


@pytest.mark.parametrize(
    ("group", "option"),
    [(g, o) for g in GROUP_DIRS if g not in ("experiment", "sweep") for o in available(g)],
)
def test_every_config_group_option_composes_and_validates(group: str, option: str):
    try:
        cfg, run = load_config(_args_for(group, option))
    except ConfigError as err:  # a preset for an engine this machine lacks (e.g. DeepSpeed)
        if all("is not installed" in p for p in err.problems):
            pytest.skip("; ".join(err.problems))
        raise
    assert cfg[group] is not None and run.name


def test_a_missing_tiny_model_fails_fast_naming_how_to_build_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from tunelab.config.preflight import preflight

    monkeypatch.chdir(tmp_path)  # no tiny_models/ here
    _, run = load_config(["experiment=lora_tiny_mistral"])
    problems: list[str] = []
    assert preflight(run, problems) is None
    [problem] = problems
    assert "local folder 'tiny_models/mistral' does not exist" in problem
    assert "python -m tools.tiny_models --arch mistral --out tiny_models/mistral" in problem


@pytest.mark.parametrize(
    ("args", "experiment", "name", "run_title"),
    [
        ([], "tunelab", "quickstart", "lora r=16 lr=5e-3"),  # the recipe's own data
        (["data=banking77"], "tunelab", "quickstart", "lora r=16 lr=5e-3"),
        (
            ["data=text_classification", "data.path=/srv/my tickets.csv", "method.r=8"],
            "my_tickets",
            "quickstart_my_tickets",
            "lora r=8 lr=5e-3 on my_tickets",
        ),
        (["data=clinc150"], "clinc150", "quickstart_clinc150", "lora r=16 lr=5e-3 on clinc150"),
        (
            ["data=text_classification", "data.path=t.csv", "logger.experiment_name=m", "name=x"],
            "m",
            "x",
            "lora r=16 lr=5e-3",
        ),
    ],
)
def test_a_run_on_other_data_is_named_foldered_and_filed_after_that_data(
    args: list[str], experiment: str, name: str, run_title: str
):
    cfg, run = load_config(["experiment=quickstart", *args])
    assert run.logger.experiment_name == experiment
    assert run.name == name  # its folder under output_root and its resume key
    assert run_name(OmegaConf.to_container(cfg, resolve=True)) == run_title
