"""`python audit.py experiment=NAME [overrides] [audit.KEY=VALUE] [output=FOLDER]`.

The run's config is composed and validated exactly as `run.py` does it; the data family's
datamodule then builds what would train (`view_for_audit`), and the audit reports on it.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from tunelab.base.audit.config import AuditConfig
from tunelab.base.errors import ConfigError

USAGE = """usage: python audit.py experiment=NAME [key=value ...] [audit.KEY=VALUE ...] [output=DIR]

Audits the data the run would train on: duplicates, cross-split leaks, label conflicts, likely
label errors, class balance and token lengths. Writes audit.md, audit.json and plots into
DIR (default <output_root>/audit/<name>/<time>) and prints a summary, the folder last.

Audit settings (audit.KEY=VALUE):
""" + "\n".join(
    f"  audit.{name}={field.default!r}" for name, field in AuditConfig.model_fields.items()
)


def split_args(args: list[str]) -> tuple[list[str], dict[str, str], str | None]:
    """The run's overrides, the `audit.*` values, and `output=` (last one wins)."""
    run_args, settings, output = [], {}, None
    for arg in args:
        key, _, value = arg.partition("=")
        group, _, name = key.partition(".")
        if key == "output":
            output = value
        elif group == "audit" and name:
            settings[name] = value
        else:
            run_args.append(arg)
    return run_args, settings, output


def load(args: list[str]) -> tuple[Any, AuditConfig, Path]:
    """The validated run config, the audit settings and the output folder.

    Raises:
        ConfigError: listing every problem of the run's config and of the audit settings.
    """
    import yaml

    from tunelab.config.validate import check, load_config

    run_args, raw, output = split_args(args)
    problems: list[str] = []
    values = {key: yaml.safe_load(value) if value else value for key, value in raw.items()}
    settings = check(AuditConfig, values, "audit", problems)
    try:
        _, run = load_config(run_args)
    except ConfigError as err:
        raise ConfigError([*err.problems, *problems]) from None
    if problems:
        raise ConfigError(problems)
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    folder = Path(output) if output else Path(run.output_root) / "audit" / run.name / stamp
    return run, settings, folder


def view_of(run: Any) -> Any:
    """What the run would train on: its data family's datamodule builds the rows."""
    from hydra.utils import get_class

    datamodule = get_class(run.data.datamodule)(
        data=run.data,
        tokenizer=run.model.name_or_path,
        max_length=run.model.max_length,
        seed=run.seed,
    )
    return datamodule.view_for_audit()


def audit(args: list[str]) -> tuple[dict[str, Any], Path]:
    """Audit the data of the run `args` describe; write the report; the result and its folder."""
    from tunelab.base.audit import findings, report

    run, settings, folder = load(args)
    result = findings.audit(view_of(run), settings)
    return result, report.write(result, folder)
