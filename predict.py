r"""Predict a file of texts with a trained model.

    python predict.py source=<export folder | runs:/ID/model | models:/NAME@ALIAS> \
        input=<file.csv|.jsonl|.parquet> output=<file.csv|.jsonl|.parquet> \
        [batch_size=32] [text_column=text] [id_column=id] [tracking_uri=...] \
        [max_new_tokens=64] [do_sample=false] [temperature=1.0]     # decoders

Classifiers write `label` and `probability` per row; decoders write `generation`.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    """Run a batch prediction from `key=value` arguments; return the exit code."""
    if not argv or any(arg in ("-h", "--help", "help") for arg in argv):
        print(__doc__)
        return 0
    from tunelab.base.errors import TunelabError, report_error
    from tunelab.serving.predict import parse_args, predict, write_rows

    try:
        args = parse_args(argv)
        from tunelab.tracking.report import quiet_libraries

        quiet_libraries()
        result, rate = predict(args)
        write_rows(result, args.output)
    except TunelabError as err:
        return report_error(err)
    print(f"{len(result)} rows -> {args.output} ({rate:.1f} rows/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
