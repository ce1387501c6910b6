r"""Export a finished run's model for deployment: ONNX (encoders), GGUF (decoders), merged HF.

    python export.py source=<run folder | run id | runs:/ID/model | models:/NAME@ALIAS> \
        format=<hf | onnx | gguf> quantize=<none | int8 | q8_0 | q4_k_m> [output=<folder>] \
        [check_rows=300] [min_agreement=0.99] [max_difference=0.1] [llama_cpp=<llama.cpp src>] \
        [tracking_uri=...] [register_as=NAME alias=ALIAS] [log_model=true]

onnx takes quantize none | int8 (onnxruntime), gguf none | q8_0 | q4_k_m, hf none | int8
(torchao int8 weight-only, needs torchao). The export is checked
against the PyTorch model on the run's test rows and refused beyond the tolerance; it is logged
as MLflow Model `model_<format>_<quantize>` of the run. The folder's path is the last line.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    """Export from `key=value` arguments; return the exit code."""
    if not argv or any(arg in ("-h", "--help", "help") for arg in argv):
        print(__doc__)
        return 0
    from tunelab.base.errors import TunelabError, report_error
    from tunelab.export.command import export, parse_args

    try:
        args = parse_args(argv)
        from tunelab.tracking.report import quiet_libraries

        quiet_libraries()
        result = export(args)
    except TunelabError as err:
        return report_error(err)
    check = result.info["check"]
    if check:
        print(
            f"checked on {check['rows']} test rows: agreement {check['agreement']:.2%}, largest "
            f"probability difference {check['max_difference']:.2e}"
        )
    else:
        print("not checked (check_rows=0)")
    for problem in result.vllm:
        print(f"vLLM would refuse the adapter: {problem}")
    if result.model_uri:
        print(f"logged as {result.model_uri}")
    print(result.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
