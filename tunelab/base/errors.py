"""Errors a user can fix: each message names the problem and the fix."""

from __future__ import annotations


class TunelabError(Exception):
    """Base of every error tunelab reports without a traceback (exit code 1)."""


class DataError(TunelabError):
    """Bad or missing data: a missing column, an empty split, a label out of range, no files."""


class ModelLoadError(TunelabError):
    """The base model could not be loaded from `model.name_or_path`."""


class NonFiniteLossError(TunelabError):
    """The training loss became NaN or infinite."""


class ConfigError(TunelabError):
    """Every problem found in a config, one per line, each naming the key and the fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config ({len(problems)} problem(s)):\n{lines}")
