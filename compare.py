r"""Compare fine-tuning methods on your data: same seed, data and budget, one MLflow parent run.

    python compare.py experiment=quickstart methods=[full,freeze,lora,adapter]
    python compare.py experiment=quickstart methods=[lora,adapter] data=text_classification \
        data.path=my.csv data.label_column=category trainer.max_epochs=2
    python compare.py experiment=quickstart methods=[full,lora] tune_lr=true sweep.n_trials=4

Every argument except `methods=`, `tune_lr=`, `metric=` and `sweep.*` applies to every method.
The table (CSV + Markdown) and the score-vs-trainable-parameters plot are the parent run's
artifacts and are written under `<output_root>/compare_<recipe>/<time>/`.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    """Run the comparison; 0 when every method finished, 1 when one failed, 2 on a bad config."""
    if not argv or any(arg in ("-h", "--help", "help") for arg in argv):
        print(__doc__)
        return 0 if argv else 2
    from tunelab.base.errors import TunelabError, report_error
    from tunelab.run.compare import compare
    from tunelab.tracking.report import quiet_libraries

    quiet_libraries()
    try:
        result = compare(argv)
    except TunelabError as err:
        return report_error(err)
    print((result.folder / "compare.md").read_text())
    print(f"MLflow parent run {result.parent_run_id}; table and plot in {result.folder}")
    for method in result.failed:
        print(f"error: method {method} failed (see the table)", file=sys.stderr)
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
