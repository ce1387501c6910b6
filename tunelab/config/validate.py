"""Check a composed config; one `ConfigError` lists every problem with its fix.

The `task`, `method` and `data` groups are validated by the config class their `_target_` names;
that class lives beside the code that uses it (`tasks/causal_lm.py`, `modules/lora.py`,
`datamodules/banking77.py`) and is imported here by path, never by name, so adding a task kind, a
method or a dataset touches no file of the core.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ValidationError

from tunelab.base.errors import ConfigError
from tunelab.base.schema import RunConfig
from tunelab.config.compose import GROUP_DIRS, available, compose, nearest
from tunelab.config.plugins import PLUGIN_PACKAGES, locate_plugin
from tunelab.config.strategies import check_strategy

LOCAL_PATH_PREFIXES = ("/", "./", "../", "~")


def _describe(error: dict[str, Any], prefix: str, schema: type[BaseModel]) -> str:
    """Turn one pydantic error into `key: problem (got value)` with a nearest-key hint."""
    loc = ".".join(str(part) for part in error["loc"])
    key = ".".join(part for part in (prefix, loc) if part)
    if error["type"] == "extra_forbidden":
        fields = [f.alias or name for name, f in schema.model_fields.items()]
        hint = nearest(str(error["loc"][-1]), fields)
        if hint and prefix:  # name the whole path: (did you mean 'method.r'?)
            hint = hint.replace(" '", f" '{prefix}.", 1)
        return f"{key}: unknown key{hint}; valid keys: {', '.join(sorted(fields))}"
    got = error.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{key}: {error['msg']}{shown}"


def check(schema: type[BaseModel], data: Any, prefix: str, problems: list[str]) -> Any:
    """Validate `data` with `schema`, appending each problem; returns the model or None."""
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        problems += [_describe(e, prefix, schema) for e in err.errors()]
        return None


def check_plugin(group: str, raw: Any, problems: list[str]) -> Any:
    """Validate a plug-in group (`task`, `method`, `data`) with the class its `_target_` names."""
    if not isinstance(raw, dict):
        problems.append(f"{group}: missing; pick one with {group}=<name>")
        return None
    found = locate_plugin(group, raw.get("_target_"))
    if isinstance(found, str):
        problems.append(found)
        return None
    return check(found, raw, group, problems)


def _check_paths(raw: dict[str, Any], problems: list[str]) -> None:
    """A model path that looks local must exist (hub ids are checked when loading)."""
    path = str((raw.get("model") or {}).get("name_or_path", ""))
    if path.startswith(LOCAL_PATH_PREFIXES) and not Path(path).expanduser().exists():
        problems.append(
            f"model.name_or_path: local folder '{path}' does not exist; "
            "give an existing folder with config.json, or a Hugging Face Hub id"
        )


def _check_pairing(raw: dict[str, Any], plugins: dict[str, Any], problems: list[str]) -> None:
    """Task, data, method and model must fit together; the task adds checks of its own."""
    task, method, data = plugins["task"], plugins["method"], plugins["data"]
    if task is not None and data is not None and data.family != task.data_family:
        fits = " or ".join(f"task={name}" for name in tasks_reading(data.family)) or "a task="
        problems.append(
            f"data={data.name} is {data.family} data but task={task.name} reads "
            f"{task.data_family} data; add {fits} (or pick another data=)"
        )
    if task is not None:
        task.check(raw, problems)
    why = task.method_problem(type(method)) if task is not None and method is not None else None
    if why:
        fits = "|".join(methods_for(task))
        problems.append(
            f"method={method.name}: task={task.name} cannot train with it: {why}; "
            f"pick method={fits or '<another>'}"
        )
    model = raw.get("model") or {}
    if method is not None and model.get("quantize") and not method.quantizable:
        problems.append(
            f"model.quantize={model['quantize']}: method {method.name} trains the base "
            "weights, which cannot be quantised; use a PEFT method (lora, ia3, prefix, prompt, "
            "ptuning) or model.quantize=null"
        )


def tasks_reading(family: str) -> list[str]:
    """The task kinds in `configs/task/` that read `family` data."""
    names = []
    for name in available("task"):
        target = OmegaConf.load(GROUP_DIRS["task"] / f"{name}.yaml").get("_target_")
        found = locate_plugin("task", target)
        if not isinstance(found, str) and found.data_family == family:
            names.append(name)
    return names


def methods_for(task: Any) -> list[str]:
    """The methods in `configs/method/` that `task` can train with."""
    names = []
    for name in available("method"):
        target = OmegaConf.load(GROUP_DIRS["method"] / f"{name}.yaml").get("_target_")
        found = locate_plugin("method", target)
        if not isinstance(found, str) and task.method_problem(found) is None:
            names.append(name)
    return names


def _resolve(cfg: DictConfig, problems: list[str]) -> dict[str, Any] | None:
    """Resolve interpolations (env vars, package folders), reporting failures as problems."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception as err:
        problems.append(f"cannot resolve config: {err}")
        return None


def validate(cfg: DictConfig, problems: list[str] | None = None) -> RunConfig:
    """Validate the whole config; raise one `ConfigError` that lists every problem found.

    Args:
        cfg: the composed config (see `tunelab.config.compose.compose`).
        problems: problems found earlier (while composing), reported together with these.

    Returns:
        The typed run config, `task`, `method` and `data` as their validated config objects.
    """
    problems = [] if problems is None else problems
    raw = _resolve(cfg, problems)
    if raw is None:
        raise ConfigError(problems)
    plugins = {group: check_plugin(group, raw.get(group), problems) for group in PLUGIN_PACKAGES}
    run = check(RunConfig, raw | plugins, "", problems)
    _check_paths(raw, problems)
    _check_pairing(raw, plugins, problems)
    check_strategy(raw, problems)
    if problems:
        raise ConfigError(problems)
    return run


def load_config(args: list[str]) -> tuple[DictConfig, RunConfig]:
    """Compose and validate in one go; one `ConfigError` reports every problem of both steps."""
    problems: list[str] = []
    cfg = compose(args, problems)
    try:
        return cfg, validate(cfg, problems)
    except ConfigError as err:
        raise ConfigError(explain_switched_method(args, err.problems)) from None


def explain_switched_method(args: list[str], problems: list[str]) -> list[str]:
    """Say so when `method=` replaced a recipe's method that set keys the new one lacks."""
    chosen = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if "=" in a}
    recipe, method = chosen.get("experiment"), chosen.get("method")
    if not recipe or not method or not (GROUP_DIRS["experiment"] / f"{recipe}.yaml").exists():
        return problems
    recipe_method = OmegaConf.load(GROUP_DIRS["experiment"] / f"{recipe}.yaml").get("method") or {}
    out = []
    for problem in problems:
        key = problem.split(":", 1)[0].removeprefix("method.").split(".")[0]
        if problem.startswith("method.") and key in recipe_method:
            why = f"has no key '{key}'" if "unknown key" in problem else problem.split(": ", 1)[1]
            problem = (
                f"method.{key}: set by experiment={recipe} for its own method, but method={method} "
                f"{why}; clear it with ~method.{key} (or drop method={method})"
            )
        out.append(problem)
    return out
