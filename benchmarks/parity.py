"""tunelab against a plain PyTorch loop and the Hugging Face Trainer: s/step, tokens/s and MFU.

    python benchmarks/parity.py [--repeats 3] [--warmup 5] [--steps 20] [--models encoder decoder]
        [--methods full lora] [--defaults-methods lora] [--threads 2]

Encoder: all-MiniLM-L6-v2 on BANKING77, batch 32, max_length 64. Decoder: a random-init Mistral
(4 layers, hidden 512, GQA, 8k BPE vocabulary trained on MedQuAD) on MedQuAD, batch 4,
max_length 256, no packing. full, and LoRA r=8 (encoder query/key/value/dense, decoder
q/k/v/o_proj); fp32. Each run is a fresh process; runs are interleaved (every repeat runs every
case, contenders in a rotating order) and the median of the repeats is reported. The first
`--warmup` optimiser steps are excluded; s/step is the mean over the next `--steps`. See
`benchmarks/parity_loops.py` for the loops and the two orders (`parity`, `defaults`), and
`benchmarks/mfu.py` for the FLOPs convention and the measured GEMM peak.
Writes `benchmarks/results/parity.{md,json}`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
RESULTS = ROOT / "benchmarks" / "results"
DECODER_SHAPE = {"hidden": 512, "layers": 4, "intermediate_size": 1536, "vocab_size": 8000}
MODELS = {
    "encoder": ["data=banking77", "model=minilm", "model.max_length=64", "data.batch_size=32"],
    "decoder": ["data=medquad", "model=tiny_mistral", "model.max_length=256",
                "data.batch_size=4", "data.packing=false"],
}  # fmt: skip
TARGETS = {"encoder": "[query,key,value,dense]", "decoder": "[q_proj,k_proj,v_proj,o_proj]"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--methods", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    parser.add_argument(
        "--defaults-methods", nargs="*", default=["lora"], help="methods also run at defaults"
    )
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every run")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "parity")
    parser.add_argument("--out", type=Path, default=RESULTS / "parity")
    parser.add_argument("--extra", nargs="*", default=[], help="more tunelab overrides")
    parser.add_argument("--one", nargs=4, metavar=("CONTENDER", "MODEL", "METHOD", "MODE"))
    parser.add_argument("--peak", choices=list(MODELS), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def overrides(
    model: str, method: str, mode: str, workdir: Path, total: int, extra: list[str] = ()
) -> list[str]:
    """The tunelab config of one case (the other loops read the same config)."""
    args = [*MODELS[model], f"method={method}", "resume=false", f"output_root={workdir}/outputs"]
    if model == "decoder":
        args.append(f"model.name_or_path={workdir / 'decoder'}")
    if method == "lora":
        args += ["method.r=8", "method.alpha=16", f"method.target_modules={TARGETS[model]}"]
    if mode == "parity":  # one fixed random order for all three; no progress bars
        args += ["data.group_by_length=false", "trainer.enable_progress_bar=false"]
    return [
        *args,
        f"trainer.max_steps={total}", "trainer.limit_val_batches=0", "trainer.limit_test_batches=0",
        "trainer.num_sanity_val_steps=0", "export.save_model=false", "logger.log_model=false",
        f"logger.tracking_uri=sqlite:///{workdir}/mlflow.db", "logger.experiment_name=parity",
        *extra,
    ]  # fmt: skip


def run_one(args: argparse.Namespace) -> dict:
    """One contender on one case, in this process; the measured window as a dict."""
    import parity_loops as loops
    from mfu import step_flops

    from tunelab.config.validate import load_config

    contender, model, method, mode = args.one
    total = args.warmup + args.steps
    _, run = load_config(overrides(model, method, mode, args.workdir, total, args.extra))
    if contender == "tunelab":
        times, counted, trained = loops.run_tunelab(run)
    elif contender == "plain":
        times, counted, trained = loops.run_plain(run, total, mode)
    else:
        times, counted, trained = loops.run_trainer(run, total, mode, args.workdir)
    seconds = times.window(args.warmup, args.steps)
    tokens = sum(counted.tokens[args.warmup : total])
    squares = sum(counted.squares[args.warmup : total])
    return {
        "s_per_step": seconds / args.steps,
        "samples_per_s": args.steps * run.data.batch_size / seconds,
        "tokens_per_s": tokens / seconds,
        "flops_per_s": step_flops(trained, method == "full", tokens, squares) / seconds,
    }


def peaks(model: str, workdir: Path) -> dict:
    """fp32 and bf16 GEMM peaks at the model's linear shapes, batch x max_length rows."""
    from mfu import gemm_peak, linear_shapes
    from transformers import AutoConfig, AutoModel

    from tunelab.config.validate import load_config

    _, run = load_config(overrides(model, "full", "parity", workdir, 1))
    config = AutoConfig.from_pretrained(run.model.name_or_path)
    shapes = linear_shapes(AutoModel.from_config(config))
    rows = run.data.batch_size * run.model.max_length
    return {dtype: gemm_peak(shapes, rows, dtype) for dtype in ("fp32", "bf16")}


def subprocess_json(argv: list[str], threads: int) -> dict:
    """Run this script with `argv` in a fresh process; its last stdout line as JSON."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, *argv], env=env, capture_output=True, text=True, cwd=ROOT
    )
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    wall = {"process_s": time.perf_counter() - start}
    return json.loads(done.stdout.strip().splitlines()[-1]) | wall


def build_decoder(workdir: Path) -> None:
    """The benchmark's random-init Mistral with a BPE tokenizer trained on MedQuAD (once)."""
    from tools.tiny_models import build_tiny_decoder, dataset_texts

    folder = workdir / "decoder"
    if not (folder / "config.json").exists():
        root = os.environ.get("TUNELAB_DATA_DIR", "data")
        build_tiny_decoder(folder, dataset_texts("medquad", root), **DECODER_SHAPE)


def cases(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(model, method, order): every method in parity order, `--defaults-methods` at defaults."""
    parity = [(mo, me, "parity") for mo in args.models for me in args.methods]
    return parity + [(mo, me, "defaults") for mo in args.models for me in args.defaults_methods]


def measure(args: argparse.Namespace) -> dict:
    """Every case x contender, `--repeats` times interleaved; {key: [result per repeat]}."""
    common = ["--warmup", str(args.warmup), "--steps", str(args.steps), "--workdir"]
    runs: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):
        for i, (model, method, mode) in enumerate(cases(args)):
            shift = (repeat + i) % 3  # rotate who goes first
            for contender in loops_order()[shift:] + loops_order()[:shift]:
                key = f"{contender}:{model}:{method}:{mode}"
                argv = ["--one", contender, model, method, mode, *common, str(args.workdir)]
                runs.setdefault(key, []).append(subprocess_json(argv, args.threads))
                print(key, runs[key][-1], flush=True)
    return runs


def loops_order() -> list[str]:
    from parity_loops import CONTENDERS

    return list(CONTENDERS)


def summarise(args: argparse.Namespace, runs: dict, peak: dict) -> list[dict]:
    """One row per case and contender: medians, MFU against the fp32 peak, ratio to tunelab."""
    rows = []
    for model, method, mode in cases(args):
        medians = {}
        for contender in loops_order():
            results = runs[f"{contender}:{model}:{method}:{mode}"]
            medians[contender] = {
                k: statistics.median(r[k] for r in results) for k in results[0]
            } | {"spread": [round(r["s_per_step"], 3) for r in results]}
        for contender, m in medians.items():
            rows.append({
                "model": model, "method": method, "mode": mode, "loop": contender, **m,
                "mfu_fp32": m["flops_per_s"] / peak[model]["fp32"],
                "tunelab_speedup": m["s_per_step"] / medians["tunelab"]["s_per_step"],
            })  # fmt: skip
    return rows


def machine() -> str:
    """CPU model, cores, torch version and today's date, for the report's header."""
    import datetime
    import platform

    import torch

    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    names = [x.split(":", 1)[1].strip() for x in text.splitlines() if x.startswith("model name")]
    cpu = names[0] if names else platform.processor() or platform.machine()
    amx = "AMX" if "amx_bf16" in text else "no AMX"
    today = datetime.date.today()
    return f"{cpu} ({amx}), {os.cpu_count()} cores, torch {torch.__version__}, {today}"


def markdown(rows: list[dict], peak: dict, args: argparse.Namespace) -> str:
    command = "python benchmarks/parity.py " + " ".join(sys.argv[1:])
    header = f"# Parity\n\nMachine: {machine()}; {args.threads} threads.\nCommand: `{command}`\n\n"
    head = header + (
        "| model | method | order | loop | s/step (median) | runs | samples/s | real tokens/s "
        "| MFU (fp32 peak) | tunelab's speed-up |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['model']} | {r['method']} | {r['mode']} | {r['loop']} | {r['s_per_step']:.3f} | "
        f"{r['spread']} | {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
        f"{100 * r['mfu_fp32']:.1f}% | {r['tunelab_speedup']:.2f}x |"
        for r in rows
    ]
    peaks = "\n".join(
        f"- {m}: fp32 {p['fp32'] / 1e9:.0f} GFLOP/s, bf16 {p['bf16'] / 1e9:.0f} GFLOP/s"
        for m, p in peak.items()
    )
    return head + "\n".join(lines) + "\n\nMeasured GEMM peaks at each model's shapes:\n" + peaks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args)))
        return 0
    if args.peak:
        print(json.dumps(peaks(args.peak, args.workdir)))
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    if "decoder" in args.models:
        build_decoder(args.workdir)
    peak = {m: subprocess_json(["--peak", m, "--workdir", str(args.workdir)], args.threads)
            for m in args.models}  # fmt: skip
    rows = summarise(args, measure(args), peak)
    report = {"argv": sys.argv[1:], "threads": args.threads, "peaks": peak, "rows": rows}
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(markdown(rows, peak, args) + "\n")
    print(markdown(rows, peak, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
