"""Compare fine-tuning methods on one recipe: same seed, data and budget, one MLflow parent run.

`python compare.py experiment=<recipe> methods=[full,freeze,lora,adapter] [key=value ...]`
composes each method as `experiment=<recipe> method=<m>` (the recipe's `method:` keys, set for
its own method, are cleared for the others with `~method.<key>`), validates every method first,
then runs them one after another as nested child runs of one parent run. The parent's artifacts:
`compare.csv`, `compare.md` (score, trainable parameters, peak memory, samples/s, wall time) and
`score_vs_params.png`. With `tune_lr=true` each method first runs a short `sweep=lr` (chosen on
validation only; `sweep.*` arguments size it) and is then trained at its best learning rate.
"""

from __future__ import annotations

import contextlib
import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from tunelab.base.errors import ConfigError
from tunelab.config.compose import CONFIG_DIR, GROUP_DIRS
from tunelab.run import compare_report
from tunelab.run.compare_report import TEXT_COLUMNS


@dataclass
class Plan:
    """What to compare: the shared arguments, the methods, and how they are scored."""

    recipe: str
    methods: list[str]
    shared: list[str]
    sweep_args: list[str] = field(default_factory=list)
    tune_lr: bool = False
    metric: str | None = None


def _values(text: str) -> list[str]:
    return [v.strip() for v in text.strip().strip("[]").split(",") if v.strip()]


def parse_args(args: list[str]) -> Plan:
    """Split the command line into the comparison's own keys and the shared overrides."""
    own: dict[str, str] = {}
    shared, sweep_args = [], []
    for arg in args:
        key, _, value = arg.partition("=")
        if key in ("methods", "tune_lr", "metric"):
            own[key] = value
        elif key.startswith("sweep."):
            sweep_args.append(arg)
        elif key in ("method", "sweep"):
            raise ConfigError([f"{key}=: not for compare.py; list the methods with methods=[...]"])
        else:
            shared.append(arg)
    recipe = next((a.split("=", 1)[1] for a in shared if a.startswith("experiment=")), "")
    methods = _values(own.get("methods", ""))
    problems = [] if recipe else ["experiment=: required, e.g. experiment=quickstart"]
    if len(methods) < 2:
        problems.append("methods=: name two or more methods, e.g. methods=[full,lora]")
    unknown = [m for m in methods if not (GROUP_DIRS["method"] / f"{m}.yaml").exists()]
    problems += [f"methods: unknown method '{m}'" for m in unknown]
    if problems:
        raise ConfigError(problems)
    tune = own.get("tune_lr", "false").lower() in ("true", "1", "yes")
    return Plan(recipe, methods, shared, sweep_args, tune, own.get("metric"))


def recipe_method(recipe: Any) -> str:
    """The method a recipe selects (`override /method: <m>`), else the root config's default."""
    chosen = [e for e in recipe.get("defaults") or [] if hasattr(e, "get")]
    chosen += [e for e in OmegaConf.load(CONFIG_DIR / "config.yaml").defaults if hasattr(e, "get")]
    for entry in chosen:  # the recipe's override first, then the root's default
        for key in ("override /method", "method"):
            if key in entry:
                return str(entry[key])
    return ""


def method_args(plan: Plan, method: str) -> list[str]:
    """The run arguments of one method: the shared ones, `method=<m>`, stale recipe keys dropped.

    The `method:` keys a recipe sets belong to its own method (LoRA's `r`, `target_modules`);
    another method runs with its own defaults, so they are cleared with `~method.<key>`.
    """
    recipe = OmegaConf.load(GROUP_DIRS["experiment"] / f"{plan.recipe}.yaml")
    if recipe_method(recipe) == method:
        return [*plan.shared, f"method={method}"]
    dropped = [f"~method.{key}" for key in (recipe.get("method") or {})]
    return [*plan.shared, f"method={method}", *dropped]


def lr_source(plan: Plan, method: str) -> str:
    """Where a method's learning rate comes from: `tuned`, `given` (`optim.lr=`), `recipe`.

    `recipe (<m>'s)` marks a method run at the rate its recipe set for another method `m`, which
    can leave it far from its best (full fine-tuning at LoRA's rate scores near chance).
    """
    if plan.tune_lr:
        return "tuned"
    if any(arg.startswith("optim.lr=") for arg in plan.shared):
        return "given"
    own = recipe_method(OmegaConf.load(GROUP_DIRS["experiment"] / f"{plan.recipe}.yaml"))
    return "recipe" if own == method else f"recipe ({own}'s)"


def load_all(plan: Plan) -> dict[str, tuple[Any, Any]]:
    """Compose and validate every method's config first, so a typo fails before any training."""
    from tunelab.config.validate import load_config

    configs, problems = {}, []
    for method in plan.methods:
        try:
            configs[method] = load_config(method_args(plan, method))
        except ConfigError as err:
            problems += [f"[{method}] {p}" for p in err.problems]
    if problems:
        raise ConfigError(problems)
    return configs


def score_key(plan: Plan, run: Any) -> str:
    """The test metric compared: `metric=`, else the task's checkpoint metric on test."""
    return plan.metric or run.task.monitor.replace("val/", "test/")


def tuned_lr(plan: Plan, method: str, parent_id: str) -> float:
    """Run `sweep=lr` for one method and return its best learning rate (on validation)."""
    from hydra.utils import get_method

    study_name = f"compare_{parent_id[:8]}_{method}_lr"
    args = [*method_args(plan, method), "sweep=lr", f"sweep.study_name={study_name}"]
    args += plan.sweep_args
    cfg, run, space = get_method("sweeps.space.load_sweep_config")(args)
    study = get_method("sweeps.optuna_sweep.run_sweep")(args, cfg, run, space)
    return float(study.best_params["optim.lr"])


def run_method(plan: Plan, method: str, config: tuple, parent_id: str) -> dict[str, Any]:
    """Train and test one method as a child run; its table row (with `error` when it failed)."""
    from hydra.utils import get_class

    from tunelab.base.errors import TunelabError
    from tunelab.config.validate import load_config
    from tunelab.run.pipeline import run_experiment

    _, run = config
    row: dict[str, Any] = {"method": method, "lr": run.optim.lr, "error": ""}
    row["lr_from"] = lr_source(plan, method)
    try:
        if plan.tune_lr:
            lr = tuned_lr(plan, method, parent_id)
            _cfg, run = load_config([*method_args(plan, method), f"optim.lr={lr}"])
            row["lr"] = lr
        meter = get_class("callbacks.throughput.Throughput")()
        result = run_experiment(run, callbacks=[meter], parent_run_id=parent_id)
    except (TunelabError, RuntimeError, ValueError) as err:  # one method failing: keep the rest
        row["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        return row
    trainable, total = result.trainable_params, result.total_params
    return row | {
        "score": result.metrics.get(score_key(plan, run), float("nan")),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": 100.0 * trainable / max(total, 1),
        "peak_memory_mb": meter.peak_memory_mb,
        "memory_kind": meter.memory_kind,
        "train_samples_per_s": meter.samples_per_s,
        "wall_time_s": result.wall_time_s,
        "run_id": result.run_id,
    }


@dataclass
class Comparison:
    """A finished comparison: its rows, the compared metric and the parent run."""

    rows: list[dict[str, Any]]
    metric: str
    parent_run_id: str
    experiment_id: str
    folder: Path

    @property
    def failed(self) -> list[str]:
        """Methods that did not finish."""
        return [r["method"] for r in self.rows if r["error"]]


def compare(args: list[str], out: Path | None = None) -> Comparison:
    """Run the comparison a command line describes; see the module docstring.

    Args:
        args: `experiment=<recipe> methods=[a,b,...] [tune_lr=true] [metric=test/...]` plus
            overrides shared by every method (`sweep.*` ones size the `tune_lr` sweeps).
        out: folder for the table and plot (default `<output_root>/compare_<recipe>/<time>`).
    """
    plan = parse_args(args)
    configs = load_all(plan)
    _, first_run = configs[plan.methods[0]]
    metric = score_key(plan, first_run)
    parent = compare_report.open_parent(plan, first_run)
    parent_id, experiment_id = parent.run_id, parent.experiment_id
    folder = out or Path(first_run.output_root) / f"compare_{plan.recipe}" / time.strftime(
        "%Y-%m-%d_%H-%M-%S"
    )
    rows: list[dict[str, Any]] = []
    status = "FAILED"
    try:
        for method in plan.methods:
            rows.append(run_method(plan, method, configs[method], parent_id))
            compare_report.write(rows, metric, plan, folder)  # partial results survive a crash
        status = "FINISHED" if all(not r["error"] for r in rows) else "FAILED"
    finally:
        compare_report.close_parent(parent, rows, metric, folder, status)
    return Comparison(rows, metric, parent_id, experiment_id, folder)


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a `compare.csv`, numbers parsed."""
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key, value in row.items():
            if key not in TEXT_COLUMNS:
                with contextlib.suppress(TypeError, ValueError):
                    row[key] = float(value)
    return rows
