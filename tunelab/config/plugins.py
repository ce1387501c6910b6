"""Find the config class of a group (a plug-in: the one `_target_` names) and its defaults.

Tasks, methods and datasets are plug-ins: each is a config class in this project's `tasks/`,
`modules/` or `datamodules/` package, named by the group's `_target_`. The class holds the only
defaults; the composed config is filled with them, so every field shows in `--cfg`, can be
overridden with `method.r=16` and is searched by sweeps, while a YAML keeps only what differs.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import BaseModel

from tunelab.base.plugin import DataConfig, MethodConfig, TaskConfig
from tunelab.base.schema import (
    ExportConfig,
    LoggerConfig,
    ModelConfig,
    OptimConfig,
    TrainerConfig,
)

# Where `_target_`s may point: this project's own packages, never arbitrary importable code.
PLUGIN_PACKAGES = {"task": "tasks.", "method": "modules.", "data": "datamodules."}
PLUGIN_BASES: dict[str, type[BaseModel]] = {
    "task": TaskConfig,
    "method": MethodConfig,
    "data": DataConfig,
}
GROUP_SCHEMAS: dict[str, type[BaseModel]] = {
    "model": ModelConfig,
    "optim": OptimConfig,
    "trainer": TrainerConfig,
    "logger": LoggerConfig,
    "export": ExportConfig,
}


def locate_plugin(group: str, target: Any) -> type[BaseModel] | str:
    """The config class a plug-in group's `_target_` names, or the problem with it."""
    package = PLUGIN_PACKAGES[group]
    if not isinstance(target, str) or not target.startswith(package):
        return (
            f"{group}._target_: {target!r} is outside this project's {group} package "
            f"({package.rstrip('.')}/); name a config class there, e.g. {package}x.XConfig"
        )
    module_name, _, name = target.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        return f"{group}._target_: cannot import {target} ({err}); check the file and class name"
    if not (isinstance(found, type) and issubclass(found, PLUGIN_BASES[group])):
        base = PLUGIN_BASES[group].__name__
        return f"{group}._target_: {target} is not a {base} subclass (tunelab.base.plugin.{base})"
    return found


def field_defaults(schema: type[BaseModel]) -> dict[str, Any]:
    """The default of every optional field of a config class (by its alias), as plain data."""
    return {
        field.alias or name: (list(value) if isinstance(value, tuple) else value)
        for name, field in schema.model_fields.items()
        if not field.is_required() and name != "target"
        for value in [field.get_default(call_default_factory=True)]
    }


def group_defaults(group: str, node: Any) -> dict[str, Any]:
    """Defaults of a config group: its schema's, or for `method`/`data` the `_target_` class's."""
    if group in PLUGIN_PACKAGES:
        found = locate_plugin(group, node.get("_target_") if hasattr(node, "get") else None)
        return {} if isinstance(found, str) else field_defaults(found)
    schema = GROUP_SCHEMAS.get(group)
    return field_defaults(schema) if schema else {}
