"""`export.merge`: merging the adapter in memory vs into a reloaded base, time and peak memory.

    python benchmarks/merge_export.py [--hidden 1024] [--layers 8] [--out PATH]

A random-init Mistral (`--hidden`, `--layers`) gets a LoRA module (all linear layers, r=16)
with a non-zero adapter; its adapter is exported, then merged and saved either the old way
(`module.load_base()` again, adapter loaded from the export, `merge_and_unload`) or the new
(`tunelab.run.merge.export_merged`: the module's own weights, in place). Each way runs in its own
process; memory is its resident set size, sampled every 5 ms while merging and saving.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def build_base(folder: Path, hidden: int, layers: int) -> Path:
    """A random-init Mistral `hidden` wide and `layers` deep, saved with its fp32 weights."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 128,
    )
    MistralForCausalLM(config).save_pretrained(folder)
    return folder


def one_way(way: str, base: Path, work: Path) -> dict:
    """Build the module, export its adapter, merge `way` (`reload` or `in_memory`); measure."""
    sys.path.insert(0, str(REPO))
    import torch
    from peft import PeftModel

    from tests.module_helpers import make_module
    from tunelab.run.merge import export_merged

    model = {"name_or_path": str(base), "task": "causal_lm", "max_length": 64}
    module = make_module("lora", model, target_modules="all-linear")
    with torch.no_grad():
        for param in module.model.parameters():
            if param.requires_grad:
                param.normal_(0.0, 0.02)
    adapter = module.export(work / "export")
    gc.collect()
    sampler = PeakRss()
    started = time.perf_counter()
    with sampler:
        if way == "reload":
            base = module.load_base()
            merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
            merged.save_pretrained(work / "merged", safe_serialization=True)
        else:
            export_merged(module, adapter, work / "merged")
    seconds = time.perf_counter() - started
    return {"way": way, "seconds": seconds, "rss_mb": sampler.start, "peak_mb": sampler.peak}


class PeakRss:
    """Resident set size when entered, and its peak inside (sampled every 5 ms)."""

    def __enter__(self) -> PeakRss:
        import psutil

        self._process, self._done = psutil.Process(), threading.Event()
        self.start = self.peak = self._process.memory_info().rss / 2**20
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, self._process.memory_info().rss / 2**20)

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def main() -> None:
    """Run both ways in fresh processes and print (and optionally write) a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--way", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.way:
        with tempfile.TemporaryDirectory() as work:
            print(json.dumps(one_way(args.way, args.base, Path(work))))
        return
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        base = build_base(Path(folder) / "base", args.hidden, args.layers)
        for way in ("reload", "in_memory"):
            child = [sys.executable, __file__, "--way", way, "--base", str(base)]
            done = subprocess.run(child, capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    lines = [
        f"Mistral hidden {args.hidden}, {args.layers} layers, LoRA r=16 on all linear layers",
        "",
        "| merge | merge + save | RSS before | peak RSS while merging and saving |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['way']} | {row['seconds']:.2f} s | {row['rss_mb']:.0f} MiB | "
            f"{row['peak_mb']:.0f} MiB (+{row['peak_mb'] - row['rss_mb']:.0f}) |"
        )
    print("\n".join(lines))
    if args.out:
        with args.out.open("a") as handle:
            handle.write("\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
