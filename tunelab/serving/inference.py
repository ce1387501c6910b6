"""Load an export folder and predict with it: the one code path of the MLflow pyfunc and predict.py.

An export folder is what `export/` of a run holds: a PEFT adapter (`adapter_config.json` with a
`peft_type`) over the base recorded at training time, an export a method wrote itself (its
`load_export` hook rebuilds it), or a whole Hugging Face model (full, freeze, distill, merged).
Adapters rebuild their base from `info["base"]`, the training run's `model.name_or_path`, with its
`model.config_overrides` (`info["base_config_overrides"]`): that folder or hub id must be
reachable where the model is loaded.

Every export folder holds `model_info.json` (`INFO_FILE`), written by the run whether or not
MLflow logged it: the task and method (each with its `_target_`), `labels`, `max_length`, and
for generators the prompt format (`template`, `system_prompt`) used in training. The task's hooks
predict; nothing here compares task names. Exports written by `export.py` add `format`,
`runtime`, `quantize`, `file` and their check; ONNX and GGUF exports load in their own runtime
(`RUNTIMES`), whose model object the task's hooks call as they call the PyTorch model.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunelab.base.errors import CorruptFileError, DataError, ModelLoadError, TunelabError
from tunelab.base.plugin import MethodConfig, TaskConfig

INFO_FILE = "model_info.json"
# `format` in model_info.json -> the module whose `load(folder, info)` runs it ("hf": PyTorch)
RUNTIMES = {"onnx": "tunelab.serving.onnx_runtime", "gguf": "tunelab.serving.gguf_runtime"}


def model_info(run: Any, labels: list[str] | None) -> dict[str, Any]:
    """What serving needs to know about a run's export, from its validated config."""
    return {
        "task": run.task.dump(),
        "method": run.method.dump(),
        "base": run.model.name_or_path,
        "base_config_overrides": dict(run.model.config_overrides),
        "labels": list(labels or []),
        "max_length": run.model.max_length,
        "template": getattr(run.data, "template", "auto"),
        "system_prompt": getattr(run.data, "system_prompt", None),
    }


def write_info(folder: Path, info: dict[str, Any]) -> Path:
    """Write `info` into an export folder as its `model_info.json`."""
    path = Path(folder) / INFO_FILE
    path.write_text(json.dumps(info, indent=2))
    return path


def read_info(folder: Path) -> dict[str, Any]:
    """The `model_info.json` of an export folder."""
    path = Path(folder) / INFO_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"{folder} has no {INFO_FILE}: it is not a tunelab export folder. Fix: pass a run's "
            "export folder (<run folder>/export), runs:/<run_id>/model or models:/<name>@<alias>"
        )
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:  # cut short or damaged
        raise CorruptFileError(
            f"{path} is unreadable ({type(err).__name__}: {str(err).splitlines()[0][:200]}); it "
            "was cut short or damaged. The run's MLflow model holds the same export: use "
            "runs:/<run_id>/model, or rerun the export"
        ) from None


def plugin(group: str, saved: dict[str, Any]) -> Any:
    """The validated task or method config saved in `model_info.json` (by its `_target_`)."""
    from tunelab.config.validate import check_plugin

    problems: list[str] = []
    found = check_plugin(group, saved, problems)
    if found is None:
        raise TunelabError(f"the export's {INFO_FILE} names an unusable {group}: {problems}")
    return found


def load_runtime(folder: Path, info: dict[str, Any]) -> Any:
    """An export in another format than PyTorch's, loaded by its runtime's module."""
    from importlib import import_module

    fmt = info["format"]
    if fmt not in RUNTIMES:
        raise ModelLoadError(f"{folder}: unknown export format '{fmt}' in its {INFO_FILE}")
    return import_module(RUNTIMES[fmt]).load(folder, info)


def _has_torchao() -> bool:
    try:
        return importlib.util.find_spec("torchao") is not None
    except ValueError:  # sys.modules holds None for it: its import is blocked
        return False


@contextmanager
def base_without_its_head_quietly() -> Iterator[None]:
    """Load an adapter's base without transformers' report on the head it initialises.

    An adapter export of a classifier holds the trained head; its base is loaded first with a
    new, random head (transformers logs a `LOAD REPORT ... classifier.weight | MISSING ... newly
    initialized` warning and a progress bar) that the adapter replaces at once. Only this load's
    transformers messages below errors are dropped (verbosity and progress bar are restored
    after it), and peft's use of transformers' deprecated `is_gradient_checkpointing` is not
    reported to the user.
    """
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" of a base about to be completed
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning
            )
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def load_model(folder: Path, info: dict[str, Any]) -> Any:
    """The trained model in eval mode, rebuilt from an export folder (see the module doc).

    Exports in another format (`info["format"]`: ONNX, GGUF) load in their own runtime.
    """
    from hydra.utils import get_class

    if info.get("format", "hf") != "hf":
        return load_runtime(folder, info)

    from tunelab.base.models import gate_bitsandbytes

    gate_bitsandbytes(False)  # nothing served is 4-bit: no bitsandbytes import or CPU notice
    if info.get("quantize") == "int8" and not _has_torchao():  # format=hf here
        raise ModelLoadError(
            f"{folder} is a torchao int8 export (export.py format=hf quantize=int8) and torchao "
            "is not installed here. Fix: pip install torchao (the version in its requirements)"
        )
    task: TaskConfig = plugin("task", info["task"])
    method: MethodConfig = plugin("method", info["method"])
    auto = get_class(task.auto_model)
    adapter = folder / "adapter_config.json"
    saved = json.loads(adapter.read_text()) if adapter.exists() else {}
    try:
        model = method.load_export(folder, task, info)
        if model is None and "peft_type" in saved:
            from peft import PeftModel

            overrides = info.get("base_config_overrides", {})  # the base as it was trained
            labels = task.model_kwargs(info["labels"])
            with base_without_its_head_quietly():
                base = auto.from_pretrained(info["base"], **overrides, **labels)
                model = PeftModel.from_pretrained(base, folder)
        elif model is None:
            model = auto.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot load the model exported in {folder}: {str(err).splitlines()[0]}\n"
            f"Fix: adapters rebuild their base model from '{info['base']}' (the training run's "
            "model.name_or_path); make that folder or hub id reachable here."
        ) from err
    return model.eval()


class Predictor:
    """A loaded export: `predict(rows)` gives one output dict per input row.

    Args:
        folder: the export folder (model weights or adapter, tokenizer, `model_info.json`).
        info: its `model_info` (default: read from the folder).
    """

    def __init__(self, folder: str | Path, info: dict[str, Any] | None = None):
        from transformers import AutoTokenizer

        self.folder = Path(folder)
        self.info = info if info is not None else read_info(self.folder)
        self.task: TaskConfig = plugin("task", self.info["task"])
        self.tokenizer = self.task.prepare_tokenizer(AutoTokenizer.from_pretrained(self.folder))
        self.model = load_model(self.folder, self.info)

    @property
    def input_columns(self) -> list[str]:
        """The columns a row must have."""
        return list(self.task.input_columns)

    def predict(self, rows: list[dict[str, Any]], **options: Any) -> list[dict[str, Any]]:
        """The task's prediction for each row (labels and probabilities, generations, ...)."""
        missing = [c for c in self.input_columns if rows and c not in rows[0]]
        if missing:
            raise DataError(
                f"the input has no '{missing[0]}' column (columns: {sorted(rows[0])}); a "
                f"{self.task.name} model reads {self.input_columns}"
            )
        return self.task.predict(self, rows, options)
