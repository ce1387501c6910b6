"""tunelab's data audit: know the data before training on it.

    python audit.py experiment=NAME [key=value ...] [audit.KEY=VALUE ...] [output=FOLDER]
    python audit.py --help

Audits exactly the data `python run.py` would train on with the same arguments: exact and near
duplicates, validation/test rows also in train, texts labelled two ways, likely label errors,
class balance and token lengths against `model.max_length`. See docs/audit.md.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    """Audit the run's data; print the summary and, last, the report's folder."""
    from tunelab.audit.cli import USAGE

    if any(arg in ("-h", "--help", "help") for arg in argv):
        print(USAGE)
        return 0
    if not argv:
        print(
            f"{USAGE}\n\nerror: no experiment given; list them with python run.py --help",
            file=sys.stderr,
        )
        return 2
    from tunelab.audit.cli import audit
    from tunelab.base.audit.report import summary
    from tunelab.base.errors import TunelabError, report_error

    try:
        result, folder = audit(argv)
    except TunelabError as err:
        return report_error(err)
    print(summary(result))
    print(f"report: {folder / 'audit.md'}")
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
