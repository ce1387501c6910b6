"""Check a composed config; one `ConfigError` lists every problem with its fix.

The `method` and `data` groups are validated by the config class their `_target_` names; that
class lives beside the code that uses it (`modules/lora.py`, `datamodules/banking77.py`) and is
imported here by path, never by name, so adding a method or a dataset touches no file of the core.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ValidationError

from tunelab.base.errors import ConfigError
from tunelab.base.schema import RunConfig
from tunelab.config.compose import GROUP_DIRS, compose, nearest
from tunelab.config.plugins import locate_plugin
from tunelab.config.strategies import check_strategy
from tunelab.tasks import TASKS

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
    """Validate a `method` or `data` group with the class its `_target_` names."""
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


def _check_pairing(raw: dict[str, Any], method: Any, data: Any, problems: list[str]) -> None:
    """Method, data, model and objective must fit together."""
    model = raw.get("model") or {}
    smoothing = (raw.get("optim") or {}).get("label_smoothing")
    task = TASKS.get(model.get("task"))
    if smoothing and task is not None and not task.has_labels:
        problems.append(
            f"optim.label_smoothing={smoothing}: smooths class labels, but model.task="
            f"{task.name} predicts tokens; use optim.label_smoothing=0 or a classification model="
        )
    if data is not None and model.get("task") and data.task != model["task"]:
        problems.append(
            f"data={data.name} feeds a {data.task} model but model.task="
            f"{model['task']}; pick a matching model= or data="
        )
    if method is not None and model.get("quantize") and not method.quantizable:
        problems.append(
            f"model.quantize={model['quantize']}: method {method.name} trains the base "
            "weights, which cannot be quantised; use a PEFT method (lora, ia3, prefix, prompt, "
            "ptuning) or model.quantize=null"
        )


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
        The typed run config, `method` and `data` as their validated config objects.
    """
    problems = [] if problems is None else problems
    raw = _resolve(cfg, problems)
    if raw is None:
        raise ConfigError(problems)
    method = check_plugin("method", raw.get("method"), problems)
    data = check_plugin("data", raw.get("data"), problems)
    run = check(RunConfig, raw | {"method": method, "data": data}, "", problems)
    _check_paths(raw, problems)
    _check_pairing(raw, method, data, problems)
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
