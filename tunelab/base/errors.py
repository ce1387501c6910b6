"""Errors a user can fix: each message names the problem and the fix."""

from __future__ import annotations

import sys


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


class DiskFullError(TunelabError):
    """A file could not be written for lack of space; what was saved before is intact.

    The run stops resumable: freed space, the same command continues it.
    """

    resumable = True


class CorruptFileError(TunelabError):
    """A file tunelab wrote earlier (a checkpoint, the prepared data, a config) is unreadable.

    Inside a run (its best checkpoint, read for testing) the run stops resumable: the rerun
    sets the file aside and continues from `resume.ckpt`.
    """

    resumable = True


def notice(message: str) -> None:
    """Tell the user on stderr what went wrong and what was done about it: `warning: ...`."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def report_error(err: TunelabError) -> int:
    """Print `error: ...` on stderr, no traceback; the exit code (2 for a config error, else 1)."""
    print(f"\nerror: {err}", file=sys.stderr)
    return 2 if isinstance(err, ConfigError) else 1
