"""Check a composed config against the typed schemas; one `ConfigError` lists every problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ValidationError

from tunelab.config import ConfigError, compose, nearest
from tunelab.schema import DATASETS, METHODS, RunConfig

LOCAL_PATH_PREFIXES = ("/", "./", "../", "~")


def _describe(error: dict[str, Any], prefix: str, schema: type[BaseModel]) -> str:
    """Turn one pydantic error into `key: problem (got value)` with a nearest-key hint."""
    loc = ".".join(str(part) for part in error["loc"])
    key = ".".join(part for part in (prefix, loc) if part)
    if error["type"] == "extra_forbidden":
        fields = [f.alias or name for name, f in schema.model_fields.items()]
        leaf = str(error["loc"][-1])
        hint = nearest(leaf, fields)
        return f"{key}: unknown key{hint}; valid keys: {', '.join(sorted(fields))}"
    got = error.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{key}: {error['msg']}{shown}"


def _check(schema: type[BaseModel], data: Any, prefix: str, problems: list[str]) -> Any:
    """Validate `data` with `schema`, appending each problem; returns the model or None."""
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        problems += [_describe(e, prefix, schema) for e in err.errors()]
        return None


def _check_named(
    group: str, registry: dict[str, type[BaseModel]], data: Any, problems: list[str]
) -> Any:
    """Validate a group whose schema is chosen by its `name` field."""
    name = data.get("name") if isinstance(data, dict) else None
    if name not in registry:
        names = sorted(registry)
        problems.append(
            f"{group}.name: unknown {group} {name!r}{nearest(str(name), names)}; "
            f"available: {', '.join(names)}"
        )
        return None
    return _check(registry[name], data, group, problems)


def _check_paths(raw: dict[str, Any], problems: list[str]) -> None:
    """A model path that looks local must exist (hub ids are checked when loading)."""
    path = str((raw.get("model") or {}).get("name_or_path", ""))
    if path.startswith(LOCAL_PATH_PREFIXES) and not Path(path).expanduser().exists():
        problems.append(
            f"model.name_or_path: local folder '{path}' does not exist; "
            "give an existing folder with config.json, or a Hugging Face Hub id"
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
        cfg: the composed config (see `tunelab.config.compose`).
        problems: problems found earlier (while composing), reported together with these.

    Returns:
        The typed run config (method and data stay plain dicts, already checked).
    """
    problems = [] if problems is None else problems
    raw = _resolve(cfg, problems)
    if raw is None:
        raise ConfigError(problems)
    run = _check(RunConfig, raw, "", problems)
    _check_named("method", METHODS, raw.get("method"), problems)
    data = _check_named("data", DATASETS, raw.get("data"), problems)
    _check_paths(raw, problems)
    model_task = (raw.get("model") or {}).get("task")
    if data is not None and model_task and data.task != model_task:
        problems.append(
            f"data.name={data.name} feeds a {data.task} model but model.task={model_task}; "
            "pick a matching model= or data="
        )
    if raw.get("sweep") is not None:  # search space: checked against this config, no trial run
        from sweeps.space import check_sweep

        check_sweep(cfg, raw["sweep"], problems)
    if problems:
        raise ConfigError(problems)
    return run


def load_config(args: list[str]) -> tuple[DictConfig, RunConfig]:
    """Compose and validate in one go; one `ConfigError` reports every problem of both steps."""
    problems: list[str] = []
    cfg = compose(args, problems)
    return cfg, validate(cfg, problems)
