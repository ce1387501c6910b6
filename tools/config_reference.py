"""Write the configuration reference (`docs/reference/config.md`) from the config classes.

Every field of every config class, with its type, default and description, read from the code:
the run-wide groups (`tunelab.base.schema`), the sweep, audit and export settings, and each
task, method and dataset class that a `configs/<group>/*.yaml` names with `_target_` (with the
values that YAML sets in place of the class defaults). A description is the field's own
`Field(description=...)`, else its entry in a class docstring's `Attributes:` section, else the
comment on or just above its line. `tests/test_config_reference.py` fails when the committed
page differs from what this writes.

    python -m tools.config_reference            # rewrite docs/reference/config.md
    python -m tools.config_reference --check    # exit 1 when it is out of date
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "reference" / "config.md"
PLUGIN_GROUPS = ("task", "method", "data")
# config classes that are not a plug-in named by a YAML: (heading, dotted class path, what for)
FIXED = (
    ("run (top level)", "tunelab.base.schema.RunConfig", "the keys at the top of a run's config"),
    ("model", "tunelab.base.schema.ModelConfig", "`configs/model/*.yaml`"),
    ("optim", "tunelab.base.schema.OptimConfig", "`configs/optim/*.yaml`"),
    ("trainer", "tunelab.base.schema.TrainerConfig", "`configs/trainer/*.yaml`"),
    ("logger", "tunelab.base.schema.LoggerConfig", "`configs/logger/*.yaml`"),
    ("export", "tunelab.base.schema.ExportConfig", "`configs/export/*.yaml`"),
    ("callbacks", "tunelab.base.schema.CallbackConfig", "each entry of `callbacks:`"),
    ("sweep", "sweeps.space.SweepConfig", "`sweeps/*.yaml` and `sweep.*` overrides"),
    ("sweep int", "sweeps.space.IntDistribution", "a `{type: int}` entry of `params`"),
    ("sweep float", "sweeps.space.FloatDistribution", "a `{type: float}` entry of `params`"),
    ("sweep categorical", "sweeps.space.CategoricalDistribution", "a `{type: categorical}` entry"),
    ("audit", "tunelab.base.audit.config.AuditConfig", "`audit.py`'s `audit.*` arguments"),
    ("export.py", "tunelab.export.command.ExportArgs", "`export.py`'s arguments"),
)
BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def load_class(dotted: str) -> type[BaseModel]:
    """The class a dotted path names (`modules.lora.LoraMethod`)."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def type_name(annotation: Any) -> str:
    """A short readable form of a type annotation (`int | None`, `'nf4' | 'fp4'`)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join(type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def bounds(metadata: list[Any]) -> str:
    """The numeric bounds and pattern pydantic keeps on a field, e.g. `> 0, < 1`."""
    parts = []
    for item in metadata:
        for attr, sign in BOUNDS.items():
            if getattr(item, attr, None) is not None:
                parts.append(f"{sign} {getattr(item, attr)}")
        if getattr(item, "pattern", None):
            parts.append(f"matches `{item.pattern}`")
    return ", ".join(parts)


def docstring_attributes(cls: type) -> dict[str, str]:
    """`name: text` entries of the `Attributes:` sections of a class and its bases."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = inspect.getdoc(klass) or ""
        section = re.split(r"^Attributes:\s*$", doc, maxsplit=1, flags=re.M)
        if len(section) < 2:
            continue
        current = None
        for line in section[1].splitlines():
            entry = re.match(r"^    (\w+)(?: \([^)]*\))?:\s*(.*)$", line)
            if entry:
                current = entry.group(1)
                found[current] = entry.group(2)
            elif current and line.startswith("        "):
                found[current] += " " + line.strip()
            elif line.strip() and not line.startswith(" "):
                break
    return found


def source_comments(cls: type) -> dict[str, str]:
    """Comments on a field's line, or on the lines just above it, in a class and its bases."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        above: list[str] = []
        for line in lines:
            comment = re.match(r"^    #\s?(.*)$", line)
            field = re.match(r"^    (\w+)\s*:[^#]*?(?:#\s*(.*))?$", line)
            if comment:
                above.append(comment.group(1))
            elif field:
                text = " ".join([*above, field.group(2) or ""]).strip()
                if text:
                    found[field.group(1)] = text
                above = []
            else:
                above = []
    return found


def default_text(field: Any, overrides: dict[str, Any], name: str) -> str:
    """The default a field takes: the YAML option's value, the class default, or `required`."""
    if name in overrides:
        value = overrides[name]
    elif field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return f"{len(value)} entries (see the YAML)"
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return f"`{text.removesuffix('...').strip()}`"


def cell(text: str) -> str:
    """Text that fits in one Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ").strip()


def field_table(cls: type[BaseModel], overrides: dict[str, Any] | None = None) -> list[str]:
    """The Markdown table of a config class's fields."""
    overrides = overrides or {}
    described = {**source_comments(cls), **docstring_attributes(cls)}
    rows = ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    for name, field in cls.model_fields.items():
        key = field.alias or name
        kind = type_name(field.annotation)
        limits = bounds(field.metadata)
        kind = f"`{cell(kind)}`" + (f" ({cell(limits)})" if limits else "")
        about = field.description or described.get(name) or described.get(key, "")
        default = default_text(field, overrides, key if key in overrides else name)
        rows.append(f"| `{key}` | {kind} | {cell(default)} | {cell(about)} |")
    return rows


def class_intro(cls: type) -> str:
    """The first paragraph of a class's docstring."""
    return (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")


def yaml_header(path: Path) -> str:
    """The first comment of a config YAML (what `run.py --help` shows)."""
    comments = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        comments.append(line.lstrip("# ").strip())
    return " ".join(comments)


def plugin_sections(group: str) -> list[str]:
    """One section per option of a plug-in group: its YAML, its class and every field."""
    out = [f"## `{group}=...` {{#{group}}}", ""]
    for path in sorted((ROOT / "configs" / group).glob("*.yaml")):
        values = yaml.safe_load(path.read_text()) or {}
        cls = load_class(values["_target_"])
        sets = {k: v for k, v in values.items() if k not in ("_target_", "name")}
        out += [f"### `{group}={path.stem}` {{#{group}-{path.stem}}}", "", yaml_header(path), ""]
        out += [f"Class `{values['_target_']}`: {class_intro(cls)}", ""]
        if sets:
            out += [f"`configs/{group}/{path.name}` sets: " + ", ".join(sorted(sets)) + ".", ""]
        section = f"{group}-{path.stem}"  # included by docs/methods/*.md (pymdownx.snippets)
        out += [f"<!-- --8<-- [start:{section}] -->", *field_table(cls, values)]
        out += [f"<!-- --8<-- [end:{section}] -->", ""]
    return out


def group_presets(group: str) -> list[str]:
    """The options of a plain group (`trainer=gpu`) and the values each sets."""
    out = []
    for path in sorted((ROOT / "configs" / group).glob("*.yaml")):
        values = yaml.safe_load(path.read_text()) or {}
        keys = ", ".join(f"`{k}`" for k in values if k != "defaults") or "nothing"
        out.append(f"- `{group}={path.stem}`: {yaml_header(path)} Sets {keys}.")
    return [*out, ""] if out else []


def render() -> str:
    """The whole reference page."""
    out = [
        "# Configuration reference",
        "",
        "<!-- generated by `python -m tools.config_reference` from the config classes; "
        "do not edit by hand -->",
        "",
        "Every setting a run, a sweep, `audit.py` and `export.py` read, from the classes that "
        "validate them (the only place a default lives). Override any of them on the command "
        "line as `group.field=value` (`method.r=16`, `trainer.max_epochs=2`); pick a group's "
        "option with `group=option` (`method=lora`). In the plug-in groups each option's "
        "defaults are its class's, with the values its YAML sets in their place. A default "
        "`${data_root:}` is the data root: `TUNELAB_DATA_DIR` when set, else `data/` in the "
        "repository, else `../shared/data` beside it.",
        "",
    ]
    groups = {heading.split(" ")[0]: heading for heading, _, _ in FIXED}
    for heading, dotted, where in FIXED:
        cls = load_class(dotted)
        anchor = re.sub(r"[^a-z]+", "-", heading.split(" (")[0]).strip("-")
        out += [f"## `{heading}` {{#{anchor}}}", "", f"{class_intro(cls)} Read from {where}.", ""]
        out += [*field_table(cls), ""]
        if heading in groups and (ROOT / "configs" / heading).is_dir():
            out += group_presets(heading)
    for group in PLUGIN_GROUPS:
        out += plugin_sections(group)
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the page, or with `--check` report whether it is up to date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if PAGE.exists() and PAGE.read_text() == text:
            return 0
        page = PAGE.relative_to(ROOT)
        print(f"error: {page} is out of date; run python -m tools.config_reference")
        return 1
    PAGE.write_text(text)
    print(PAGE.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
