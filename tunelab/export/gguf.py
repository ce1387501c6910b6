"""GGUF export of a merged decoder with llama.cpp's own converter and quantiser.

The converter, `convert_hf_to_gguf.py`, ships with llama.cpp's source, not in a wheel: pass
`llama_cpp=` a llama.cpp checkout or llama-cpp-python's source archive (`pip download
--no-binary :all: --no-deps llama-cpp-python`, whose `vendor/llama.cpp` holds it); the archive's
converter and its matching `gguf-py` are unpacked once into `~/.cache/tunelab/llama.cpp/`.
`q8_0` is written by the converter; `q4_k_m` is quantised from f16 by llama.cpp's quantiser
through llama-cpp-python. The runtime that checks and serves it is llama-cpp-python.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from tunelab.export.check import ExportError

FILE = "model.gguf"
CONVERTER = "convert_hf_to_gguf.py"
OUTTYPE = {"none": "f32", "q8_0": "q8_0"}  # written by the converter itself
QUANTISER = ("q4_k_m",)  # quantised from f16 by llama.cpp's quantiser
CACHE = Path.home() / ".cache" / "tunelab" / "llama.cpp"
HOW = (
    "Fix: pip download --no-binary :all: --no-deps llama-cpp-python -d <dir>, then pass "
    "llama_cpp=<dir>/llama_cpp_python-<version>.tar.gz (or llama_cpp=<a llama.cpp checkout>)"
)
# Runs the converter in a child process. llama.cpp recognises BPE pre-tokenizers by a hash of
# known tokenizers' output; an unknown one (a tokenizer trained here) stops the converter. A
# byte-level BPE with GPT-2's split rule is llama.cpp's `gpt-2` pre-tokenizer, so that is used
# for it; predictions tokenise with the Hugging Face tokenizer either way.
RUNNER = """
import runpy, sys
from pathlib import Path
script, *args = sys.argv[1:]
sys.path[:0] = [str(Path(script).parent), str(Path(script).parent / "gguf-py")]
sys.argv = [script, *args]
try:
    from conversion.base import TextModel
except ImportError:  # an older llama.cpp whose converter is one file: no fallback
    TextModel = None
if TextModel is not None:
    known = TextModel.get_vocab_base_pre
    def pre(self, tokenizer):
        try:
            return known(self, tokenizer)
        except NotImplementedError:
            return "gpt-2"
    TextModel.get_vocab_base_pre = pre
runpy.run_path(script, run_name="__main__")
"""


def _unpack(archive: Path) -> Path:
    """The llama.cpp folder of a llama-cpp-python source archive, unpacked once into the cache."""
    target = CACHE / archive.name.removesuffix(".tar.gz")
    if not (target / CONVERTER).is_file():
        with tarfile.open(archive) as tar:
            parts = (f"/llama.cpp/{CONVERTER}", "/llama.cpp/conversion/", "/llama.cpp/gguf-py/")
            wanted = [m for m in tar.getmembers() if any(p in m.name for p in parts)]
            tar.extractall(target / "raw", members=wanted, filter="data")
        [script] = (target / "raw").rglob(CONVERTER)  # .../vendor/llama.cpp/
        shutil.copytree(script.parent, target, dirs_exist_ok=True)
        shutil.rmtree(target / "raw")
    return target


def converter(llama_cpp: str) -> Path:
    """The llama.cpp folder holding `convert_hf_to_gguf.py` and `gguf-py/`.

    Raises:
        ExportError: when `llama_cpp=` is not given or holds no converter.
    """
    path = Path(llama_cpp).expanduser() if llama_cpp else None
    if path is not None and path.is_file() and path.name.endswith(".tar.gz"):
        path = _unpack(path)
    if path is not None and (path / "vendor" / "llama.cpp").is_dir():
        path = path / "vendor" / "llama.cpp"
    if path is None or not (path / CONVERTER).is_file():
        where = f"llama_cpp={llama_cpp} holds no {CONVERTER}" if llama_cpp else "llama_cpp= unset"
        raise ExportError(f"format=gguf needs llama.cpp's converter ({where}). {HOW}")
    return path


def runtime_missing() -> str | None:
    """Why llama-cpp-python cannot run here, or None."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return (
            "format=gguf checks and serves with llama-cpp-python, which is not installed. Fix: "
            "pip install llama-cpp-python (builds llama.cpp; needs cmake and a C++ compiler)"
        )
    return None


def convert(hf_folder: Path, out: Path, outtype: str, llama_cpp: Path) -> None:
    """Run llama.cpp's converter on a Hugging Face folder."""
    command = [sys.executable, "-c", RUNNER, str(llama_cpp / CONVERTER)]
    command += [str(hf_folder), "--outfile", str(out)]
    done = subprocess.run(
        [*command, "--outtype", outtype], capture_output=True, text=True, check=False
    )
    if done.returncode != 0 or not out.is_file():
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise ExportError(f"llama.cpp's converter failed on {hf_folder}:\n{tail}")


def quantize_file(source: Path, out: Path, kind: str) -> None:
    """llama.cpp's quantiser (`llama_model_quantize`) from `source` to `out` as `kind`."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind.upper()}")
    if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params) != 0:
        raise ExportError(f"llama.cpp could not quantise {source} to {kind}")


def write(model: Any, tokenizer: Any, folder: Path, options: Any) -> dict[str, Any]:
    """The GGUF file of `model` in `folder`, quantised as `options.quantize`; its info."""
    missing = runtime_missing()
    if missing:
        raise ExportError(missing)
    source = converter(options.llama_cpp)
    hf_folder = folder / "hf"
    model.save_pretrained(hf_folder, safe_serialization=True)
    tokenizer.save_pretrained(hf_folder)
    target = folder / FILE
    if options.quantize in QUANTISER:  # k-quants: llama.cpp's quantiser, from f16
        f16 = folder / "f16.gguf"
        convert(hf_folder, f16, "f16", source)
        quantize_file(f16, target, options.quantize)
        f16.unlink()
    else:
        convert(hf_folder, target, OUTTYPE[options.quantize], source)
    shutil.rmtree(hf_folder)
    return {"file": FILE, "runtime": "llama.cpp", "requirements": ["llama-cpp-python"]}
