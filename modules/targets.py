"""Checks that a method's module names match the base model, before any weight is loaded."""

from __future__ import annotations

from tunelab.base.plugin import ModelProbe


def matches(name: str, target: str) -> bool:
    """Whether a module name matches a target as in peft: equal, or ending with `.target`."""
    return name == target or name.endswith(f".{target}")


def check_targets(
    targets: list[str] | str | None, probe: ModelProbe, key: str, problems: list[str]
) -> None:
    """Each name in `targets` must match at least one linear layer of the model.

    Args:
        targets: the configured names (`all-linear` and None always match).
        probe: the model's module names, read from a weightless skeleton.
        key: the config path, for the message (e.g. `method.target_modules`).
        problems: problems are appended here, with the model's candidate names.
    """
    if targets is None or isinstance(targets, str):
        return
    missing = [t for t in targets if not any(matches(n, t) for n in probe.linear_names)]
    if not missing:
        return
    leaves = sorted({".".join(n.split(".")[-2:]) for n in probe.linear_names if "." in n})
    problems.append(
        f"{key}: {missing} match no linear layer of {probe.model_type} "
        f"({probe.name_or_path}); candidates: {', '.join(leaves[:20])} (or all-linear)"
    )
