"""Checks that need the base model's architecture, run before any weight or data is loaded.

The model is read as `config.json` plus a skeleton on the meta device (no memory, no weights),
so a 7B model is checked in about a second. Each method adds its own checks (`check` hook):
target modules that match nothing, layer counts out of range, a missing teacher.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from tunelab.base.errors import ConfigError
from tunelab.base.plugin import ModelProbe, TaskConfig
from tunelab.base.schema import RunConfig
from tunelab.config.compose import GROUP_DIRS, available, nearest

POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length")


def probe_model(name_or_path: str, task: TaskConfig) -> ModelProbe:
    """Names of the linear layers, the block count and the position limit of a model."""
    import torch
    from hydra.utils import get_class
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path)
    auto = get_class(task.auto_model)
    with torch.device("meta"):
        skeleton = auto.from_config(config)
    linears = [n for n, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear)]
    lists = [len(m) for m in skeleton.modules() if isinstance(m, torch.nn.ModuleList)]
    positions = next((getattr(config, k) for k in POSITION_KEYS if hasattr(config, k)), None)
    return ModelProbe(
        name_or_path=name_or_path,
        model_type=config.model_type,
        num_layers=max(lists, default=0),
        max_positions=positions,
        linear_names=linears,
        hf_config=config,
    )


def made_how(path: str) -> str | None:
    """What the model option naming `path` says about it: its YAML comment (how to build it)."""
    for option in available("model"):
        yaml = GROUP_DIRS["model"] / f"{option}.yaml"
        if str(OmegaConf.load(yaml).get("name_or_path")) == path:
            lines = yaml.read_text().splitlines()
            comment = [line.lstrip("# ").strip() for line in lines if line.startswith("#")]
            return f"model={option}: {' '.join(comment)}" if comment else None
    return None


def missing_local_model(path: str) -> str | None:
    """The problem when `path` is a model option's own local folder (built, never on the hub).

    Such a path (`tiny_models/mistral`) also reads as a hub id; without this check loading would
    retry the hub for a minute and then suggest a hub id instead of the command that builds it.
    """
    if Path(path).expanduser().exists():
        return None
    how = made_how(path)
    if how is None:
        return None
    return (
        f"model.name_or_path: local folder '{path}' does not exist; "
        f"it is built, not downloaded ({how})"
    )


def preflight(run: RunConfig, problems: list[str] | None = None) -> ModelProbe | None:
    """Run every architecture-dependent check.

    Args:
        run: the validated config.
        problems: where to append what is wrong; None raises one `ConfigError` instead.

    Returns:
        The probe, or None when the model cannot be read here (then loading reports it).
    """
    collect = problems is not None
    problems = problems if collect else []
    missing = missing_local_model(run.model.name_or_path)
    if missing:
        problems.append(missing)
        if not collect:
            raise ConfigError(problems)
        return None
    try:
        probe = probe_model(run.model.name_or_path, run.task)
    except (OSError, ValueError, KeyError):  # unreachable hub id or unknown type: loading says
        return None
    if probe.max_positions and run.model.max_length > probe.max_positions:
        problems.append(
            f"model.max_length: {run.model.max_length} but {run.model.name_or_path} has "
            f"{probe.max_positions} positions; use model.max_length<={probe.max_positions}"
        )
    check_config_overrides(run.model.config_overrides, probe, problems)
    run.method.check(probe, run.task, problems)
    run.task.check_model(probe, problems)
    if problems and not collect:
        raise ConfigError(problems)
    return probe


def check_config_overrides(overrides: dict, probe: ModelProbe, problems: list[str]) -> None:
    """Each `model.config_overrides` key must be a setting of the model's own config."""
    settings = sorted(probe.hf_config.to_dict())
    for key in overrides:
        if key not in settings:
            problems.append(
                f"model.config_overrides.{key}: not a setting of {probe.name_or_path}'s "
                f"config ({probe.model_type}){nearest(key, settings)}; its settings: "
                f"{', '.join(settings)}"
            )
