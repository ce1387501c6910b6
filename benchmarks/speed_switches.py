"""Each speed switch measured on tunelab's own loop: s/step, real tokens/s, whole-process time.

    python benchmarks/speed_switches.py [--repeats 3] [--warmup 5] [--steps 20] [--threads 2]

Cases are `benchmarks/parity.py` cases at tunelab's defaults (length-grouped batches, the same
order for every variant of a case, fp32) with one switch changed: the AdamW kernel
(`optim.implementation`), `trainer.precision=bf16-mixed` (what `auto` would pick on an AMX CPU),
`trainer.compile=true`, and for the decoder `data.packing=true` (real tokens/s: packed rows hold
more tokens). Every run is a fresh process; variants are interleaved and the median reported. The
evaluation batch size is measured apart: `trainer.validate` over BANKING77's 900 validation rows.
Writes `benchmarks/results/speed_switches.{md,json}`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent)]
import parity  # noqa: E402  (benchmarks/ sits beside this file)

SWITCHES = {  # (model, method) -> {variant: extra overrides}
    ("encoder", "lora"): {
        "baseline": [], "optim.implementation=foreach": ["optim.implementation=foreach"],
        "optim.implementation=fused": ["optim.implementation=fused"],
        "trainer.precision=bf16-mixed": ["trainer.precision=bf16-mixed"],
        "trainer.compile=true": ["trainer.compile=true"],
    },
    ("encoder", "full"): {
        "baseline": [], "optim.implementation=foreach": ["optim.implementation=foreach"],
        "optim.implementation=fused": ["optim.implementation=fused"],
    },
    ("decoder", "lora"): {
        "baseline": [], "trainer.precision=bf16-mixed": ["trainer.precision=bf16-mixed"],
        "trainer.compile=true": ["trainer.compile=true"],
        "data.packing=true": ["data.packing=true"],
        "data.group_by_length=false": ["data.group_by_length=false"],
    },
    ("decoder", "full"): {
        "baseline": [], "optim.implementation=fused": ["optim.implementation=fused"],
        "trainer.precision=bf16-mixed": ["trainer.precision=bf16-mixed"],
    },
}  # fmt: skip
EVAL_SIZES = (32, 64, 128, 256)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=parity.parse_args([]).workdir)
    parser.add_argument("--out", type=Path, default=parity.RESULTS / "speed_switches")
    parser.add_argument("--eval-size", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def eval_rows_per_s(size: int, workdir: Path) -> dict:
    """Rows/s of `trainer.validate` over BANKING77's validation split at eval batch `size`."""
    import lightning as L
    from parity_loops import prepared

    from tunelab.config.validate import load_config

    overrides = parity.overrides("encoder", "lora", "defaults", workdir, 1)
    _, run = load_config([*overrides, f"data.eval_batch_size={size}"])
    datamodule, module, _ = prepared(run)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False)
    trainer.validate(module, datamodule=datamodule, verbose=False)  # warm-up pass
    start = time.perf_counter()
    trainer.validate(module, datamodule=datamodule, verbose=False)
    return {"rows_per_s": len(datamodule.splits["validation"]) / (time.perf_counter() - start)}


def measure(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Every case x variant (and eval batch size), `--repeats` times interleaved."""
    common = ["--warmup", str(args.warmup), "--steps", str(args.steps)]
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for (model, method), variants in SWITCHES.items():
            for variant, extra in variants.items():
                argv = ["--one", "tunelab", model, method, "defaults", *common]
                argv += ["--workdir", str(args.workdir), "--extra", *extra]
                key = f"{model}|{method}|{variant}"
                runs.setdefault(key, []).append(parity.subprocess_json(argv, args.threads))
                print(key, runs[key][-1], flush=True)
        for size in EVAL_SIZES:
            argv = ["--eval-size", str(size), "--workdir", str(args.workdir)]
            result = subprocess_self(argv, args.threads)
            runs.setdefault(f"eval|{size}", []).append(result)
    return runs


def subprocess_self(argv: list[str], threads: int) -> dict:
    """Run this script (not parity.py) in a fresh process; its last line as JSON."""
    import os
    import subprocess

    env = os.environ | {"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, __file__, *argv], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(runs: dict[str, list[dict]]) -> str:
    """Training switches against their case's baseline, then eval batch sizes."""
    median = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
    lines = [
        "| case | switch | s/step | real tokens/s | vs baseline (tokens/s) | process s "
        "| runs (s/step) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (model, method), variants in SWITCHES.items():
        base = median[f"{model}|{method}|baseline"]
        for variant in variants:
            m, key = median[f"{model}|{method}|{variant}"], f"{model}|{method}|{variant}"
            spread = [round(r["s_per_step"], 3) for r in runs[key]]
            gain = m["tokens_per_s"] / base["tokens_per_s"]
            lines.append(
                f"| {model} {method} | {variant} | {m['s_per_step']:.3f} | {m['tokens_per_s']:.0f} "
                f"| {gain:.2f}x | {m['process_s']:.0f} | {spread} |"
            )
    lines += ["", "| eval batch size | validation rows/s |", "|---|---|"]
    lines += [f"| {s} | {median[f'eval|{s}']['rows_per_s']:.0f} |" for s in EVAL_SIZES]
    return "\n".join(lines)


def header(args: argparse.Namespace) -> str:
    """Title, machine and command of the report."""
    command = "python benchmarks/speed_switches.py " + " ".join(sys.argv[1:])
    return (
        f"# Speed switches\n\nMachine: {parity.machine()}; {args.threads} threads.\n"
        f"Command: `{command}`\n\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.eval_size:
        print(json.dumps(eval_rows_per_s(args.eval_size, args.workdir)))
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    parity.build_decoder(args.workdir)
    runs = measure(args)
    args.out.with_suffix(".json").write_text(json.dumps({"threads": args.threads, "runs": runs}))
    args.out.with_suffix(".md").write_text(header(args) + markdown(runs) + "\n")
    print(markdown(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
