"""`export.py`: one finished run's model in another format, checked against it, logged beside it.

    python export.py source=<run folder | run id | runs:/ID/model | models:/NAME@ALIAS>
        format=<hf | onnx | gguf> quantize=<none | int8 | q8_0 | q4_k_m> [output=<folder>]

The new folder carries the source's `model_info.json` plus `format`, `runtime`, `quantize`,
`file` and the check's result, so predict.py, the pyfunc and `mlflow models serve` run it with
the same input and output (in onnxruntime, llama.cpp or PyTorch). It is logged as MLflow Model
`model_<format>_<quantize>` of the source's run (registered when `register_as=` is given).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunelab.base.errors import ConfigError
from tunelab.export.check import ExportError, Tolerance, compare, enforce, predict_all, test_rows

# format -> what it can be quantised to ("none": the fine-tuned precision, fp32 on CPU)
QUANTIZE = {"hf": ("none", "int8"), "onnx": ("none", "int8"), "gguf": ("none", "q8_0", "q4_k_m")}
WRITERS = {"hf": "tunelab.export.hf", "onnx": "tunelab.export.onnx", "gguf": "tunelab.export.gguf"}


class ExportArgs(BaseModel):
    """`key=value` arguments of export.py.

    Attributes:
        source: a run folder, an export folder, a run id, `runs:/` or `models:/` URI.
        format: `hf` (merged PyTorch model), `onnx` (encoders), `gguf` (decoders, llama.cpp).
        quantize: see `QUANTIZE` for what each format takes (`hf` int8: torchao weight-only).
        output: the new folder (default `<run folder>/exports/<format>_<quantize>`).
        check_rows: test rows the check predicts (default 300; 8 prompts for generators).
        min_agreement: least share of rows with equal labels or generations (see `Tolerance`).
        max_difference: largest probability difference allowed.
        llama_cpp: llama.cpp's source (checkout or llama-cpp-python sdist) for `format=gguf`.
        batch_size: rows per batch in the check.
        tracking_uri: where `runs:/` and `models:/` sources are looked up.
        log_model: log the export as an MLflow Model of the source run.
        register_as: register the logged model under this name (`alias` points at it).
        alias: the registry alias set on that version.
    """

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1)
    format: Literal["hf", "onnx", "gguf"] = "onnx"
    quantize: Literal["none", "int8", "int4", "q8_0", "q4_k_m"] = "none"
    output: str = ""
    check_rows: int | None = Field(default=None, ge=0)
    min_agreement: float | None = Field(default=None, ge=0, le=1)
    max_difference: float | None = Field(default=None, ge=0)
    batch_size: int = Field(default=32, ge=1)
    llama_cpp: str = ""
    tracking_uri: str | None = None
    log_model: bool = True
    register_as: str | None = None
    alias: str | None = None

    @property
    def model_name(self) -> str:
        """The MLflow Model name of the export within its run."""
        return f"model_{self.format}_{self.quantize}"


@dataclass
class Exported:
    """What an export wrote: the folder, the check, vLLM's objections, the logged model."""

    folder: Path
    info: dict[str, Any]
    vllm: list[str] = field(default_factory=list)
    model_uri: str = ""


def parse_args(argv: list[str]) -> ExportArgs:
    """`key=value` pairs -> `ExportArgs`; every problem in one `ConfigError`."""
    import yaml
    from pydantic import ValidationError

    values, problems = {}, []
    for arg in argv:
        key, sep, raw = arg.partition("=")
        if not sep or key not in ExportArgs.model_fields:
            problems.append(f"'{arg}': expected key=value, key in {list(ExportArgs.model_fields)}")
            continue
        text_keys = ("source", "output", "llama_cpp", "tracking_uri", "register_as", "alias")
        values[key] = raw if key in text_keys else yaml.safe_load(raw)
    try:
        args = ExportArgs(**values)
    except ValidationError as err:
        problems += [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
        raise ConfigError(problems) from None
    if args.quantize not in QUANTIZE[args.format]:
        problems.append(
            f"quantize={args.quantize}: format={args.format} takes {list(QUANTIZE[args.format])}"
        )
    if problems:
        raise ConfigError(problems)
    return args


def check_task(args: ExportArgs, predictor: Any) -> None:
    """The format must fit what the model does and the source must be a run's own export."""
    fmt, generates = predictor.info.get("format", "hf"), predictor.task.next_token
    if fmt != "hf":
        raise ExportError(
            f"source={args.source} is already a {fmt} export. Fix: export from the run itself"
        )
    if args.format == "onnx" and generates:
        raise ExportError(
            "format=onnx exports models that predict in one forward pass; this one generates "
            "token by token. Fix: format=gguf (llama.cpp) or format=hf"
        )
    if args.format == "gguf" and not generates:
        raise ExportError("format=gguf is for decoders (llama.cpp). Fix: format=onnx or format=hf")
    if args.format == "hf" and args.quantize == "int8":
        from tunelab.export.hf import torchao_missing

        if torchao_missing():
            raise ExportError(torchao_missing())
    if args.format == "gguf":  # before minutes of work: llama.cpp's runtime and converter
        from tunelab.export.gguf import converter, runtime_missing

        missing = runtime_missing()
        if missing:
            raise ExportError(missing)
        converter(args.llama_cpp)


def output_folder(args: ExportArgs, run_dir: Path | None, run_id: str) -> Path:
    """Where the export goes; refused when it holds something already (nothing is overwritten)."""
    name = f"{args.format}_{args.quantize}"
    if args.output:
        out = Path(args.output)
    elif run_dir is not None:
        out = run_dir / "exports" / name
    else:
        out = Path("exports") / (run_id or "model") / name
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"output folder {out} exists and is not empty. Fix: output=<new folder>")
    return out


def write_format(args: ExportArgs, predictor: Any, folder: Path) -> dict[str, Any]:
    """The export in `folder` with its `model_info.json` (before the check)."""
    from importlib import import_module

    from tunelab.base.outofscope import copy_detector
    from tunelab.export.hf import whole_model
    from tunelab.serving.inference import write_info

    shutil.rmtree(folder, ignore_errors=True)  # an earlier attempt that died half-way
    folder.mkdir(parents=True)
    model = whole_model(predictor.model)
    written = import_module(WRITERS[args.format]).write(model, predictor.tokenizer, folder, args)
    predictor.tokenizer.save_pretrained(folder)
    copy_detector(predictor.folder, folder)  # an out-of-scope detector answers alike there
    info = predictor.info | written | {"format": args.format, "quantize": args.quantize}
    write_info(folder, info | {"exported_from": args.source})
    return info | {"exported_from": args.source}


def tolerance(args: ExportArgs) -> Tolerance:
    """The check's tolerance: the quantisation's default, or `min_agreement=`, `max_difference=`."""
    found = Tolerance.default(args.quantize)
    if args.min_agreement is not None:
        found.min_agreement = args.min_agreement
    if args.max_difference is not None:
        found.max_difference = args.max_difference
    return found


def store_uri(args: ExportArgs, config: dict[str, Any] | None) -> str:
    """`tracking_uri=`, else the run's own store, else `MLFLOW_TRACKING_URI` / `mlflow.db`."""
    from tunelab.serving.predict import default_tracking_uri
    from tunelab.tracking.store import absolute_uri

    run_uri = ((config or {}).get("logger") or {}).get("tracking_uri")
    return absolute_uri(args.tracking_uri or run_uri or default_tracking_uri())


def checked(args: ExportArgs, reference: Any, rows: list[dict], out: Path) -> dict[str, Any]:
    """Write the export beside `out`, check it against `reference` on `rows`, then move it in."""
    from tunelab.serving.inference import Predictor, write_info

    expected = predict_all(reference, rows, args.batch_size)
    partial = out.with_name(f".{out.name}.partial")
    try:
        info = write_format(args, reference, partial)
        found = compare(expected, predict_all(Predictor(partial), rows, args.batch_size))
        if rows:
            enforce(found, tolerance(args), f"the {args.format} export (quantize={args.quantize})")
        info["check"] = found.as_dict() | {"tolerance": vars(tolerance(args))} if rows else {}
        write_info(partial, info)
        if out.exists():
            out.rmdir()  # empty (see `output_folder`)
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return info


def export(args: ExportArgs) -> Exported:
    """Resolve the source, write and check the export, log it to the source's MLflow run."""
    from tunelab.export.source import resolve
    from tunelab.export.vllm import vllm_problems
    from tunelab.serving.inference import Predictor
    from tunelab.serving.mlflow_model import log_model, register

    source = resolve(args.source, store_uri(args, None))
    reference = Predictor(source.folder)
    check_task(args, reference)
    out = output_folder(args, source.run_dir, source.run_id)
    few = 8 if reference.task.next_token else 300  # generation is slow; a few prompts suffice
    n = few if args.check_rows is None else args.check_rows
    rows = test_rows(source.config, reference.task, n)
    result = Exported(out, checked(args, reference, rows, out), vllm_problems(source.folder))
    if source.run_id and args.log_model:
        uri = store_uri(args, source.config)
        result.model_uri = log_model(uri, source.run_id, out, rows[:3], args.model_name)
        if args.register_as:
            register(uri, source.run_id, args.register_as, args.alias, args.model_name)
    return result
