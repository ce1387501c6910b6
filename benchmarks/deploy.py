"""The deployment table: every serving variant of one classifier (and a tiny decoder) on this CPU.

    python benchmarks/deploy.py --classifier outputs/freeze_minilm_banking77/<time> \
        [--pruned outputs/prune_minilm_banking77/<time> ...] [--distilled <run folder>] \
        [--decoder outputs/lora_tiny_mistral/<time> --llama-cpp <llama-cpp-python sdist>] \
        [--rows 500] [--repeats 100] [--batches 10] [--out benchmarks/results/deploy.md]
    python benchmarks/deploy.py --smoke ...     # a few rows and calls: checks it runs, no numbers

Variants of the classifier: PyTorch fp32 (the run's export; give a whole-model run such as
the freeze recipe: an adapter folder's size leaves out its base), PyTorch int8 (torch's dynamic
int8 quantisation of the Linear layers), ONNX fp32 and int8 (`export.py`), the pruned and the
distilled runs given, each also as ONNX int8; of the decoder: PyTorch fp32 and GGUF q8_0 /
q4_k_m (llama.cpp). Each gets test accuracy (the decoder: agreement of greedy generations with
fp32), size on disk, p50 / p95 latency of one row and rows/s at batch 64. Timed calls are
interleaved: every round calls each variant once at batch 1 and, every few rounds, once at
batch 64, so load on the machine hits all alike. Run it on an otherwise idle machine. Logged to
MLflow as one parent run with a child per variant.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tunelab and the plug-ins run from the repository root


@dataclass
class Variant:
    """One way of serving a model, with what was measured."""

    name: str
    predictor: Any
    folder: Path
    size_mb: float = 0.0
    quality: float = float("nan")
    latencies: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    note: str = ""


def folder_mb(folder: Path) -> float:
    """Size on disk of the files that serve a model (tokenizer included)."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 2**20


def split_rows(run_dir: Path, n: int) -> tuple[list[dict], list[str] | None]:
    """Up to `n` test rows of a run in the prediction format, and their true labels (if any)."""
    import yaml
    from omegaconf import OmegaConf

    from tunelab.config.validate import validate
    from tunelab.run.build import build_datamodule

    run = validate(OmegaConf.create(yaml.safe_load((run_dir / "config.yaml").read_text())))
    datamodule = build_datamodule(run)
    datamodule.setup("test")
    rows = run.task.examples(datamodule, n)
    split = getattr(datamodule, "splits", None)
    if not getattr(datamodule, "labels", None):  # no classes: a decoder's token labels
        return rows, None
    ids = split["test"][: len(rows)]["labels"]
    return rows, [datamodule.labels[i] for i in ids]


def exported(run_dir: Path, out: Path, fmt: str, quantize: str, llama_cpp: str = "") -> Path:
    """`export.py` of a run into `out` (not logged); the folder."""
    from tunelab.export.command import ExportArgs, export

    folder = out / f"{run_dir.name}_{fmt}_{quantize}"
    args = ExportArgs(source=str(run_dir), format=fmt, quantize=quantize, output=str(folder))
    args.log_model, args.llama_cpp = False, llama_cpp
    args.min_agreement, args.max_difference = 0.0, 1.0  # the table reports accuracy itself
    return export(args).folder


def torch_int8(run_dir: Path, out: Path) -> Variant:
    """The run's PyTorch model with int8 dynamic quantisation of its Linear layers."""
    import torch

    from tunelab.serving.inference import Predictor

    predictor = Predictor(run_dir / "export")
    model = getattr(predictor.model, "merge_and_unload", lambda: predictor.model)()
    predictor.model = torch.ao.quantization.quantize_dynamic(
        model, {torch.nn.Linear}, dtype=torch.qint8
    )
    path = out / "pytorch_int8.pt"
    torch.save(predictor.model.state_dict(), path)
    variant = Variant("pytorch int8", predictor, run_dir / "export")
    variant.size_mb = path.stat().st_size / 2**20
    return variant


def classifier_variants(args: argparse.Namespace, out: Path) -> list[Variant]:
    """The classifier's variants (fp32, int8, ONNX, pruned, distilled)."""
    from tunelab.serving.inference import Predictor

    run = Path(args.classifier)
    found = [Variant("pytorch fp32", Predictor(run / "export"), run / "export")]
    found.append(torch_int8(run, out))
    for quantize in ("none", "int8"):
        folder = exported(run, out, "onnx", quantize)
        found.append(Variant(f"onnx {quantize}", Predictor(folder), folder))
    for tag, runs in (("pruned", args.pruned), ("distilled", args.distilled)):
        for other in runs or []:
            folder = Path(other) / "export"
            found.append(Variant(f"{tag}", Predictor(folder), folder))
            folder = exported(Path(other), out, "onnx", "int8")  # both steps together
            found.append(Variant(f"{tag} + onnx int8", Predictor(folder), folder))
    return found


def decoder_variants(args: argparse.Namespace, out: Path) -> list[Variant]:
    """The decoder's variants: PyTorch fp32 and GGUF (skipped, with the reason, without it)."""
    from tunelab.base.errors import TunelabError
    from tunelab.serving.inference import Predictor

    run = Path(args.decoder)
    found = [Variant("decoder pytorch fp32", Predictor(run / "export"), run / "export")]
    for quantize in ("q8_0", "q4_k_m"):
        try:
            folder = exported(run, out, "gguf", quantize, args.llama_cpp)
        except TunelabError as err:
            print(f"gguf {quantize} skipped: {str(err).splitlines()[0]}")
            continue
        found.append(Variant(f"decoder gguf {quantize}", Predictor(folder), folder))
    return found


def score(variants: list[Variant], rows: list[dict], truth: list[str] | None) -> None:
    """Accuracy against the true labels, else agreement with the first (fp32) variant."""
    reference: list[dict] = []
    for variant in variants:
        got = []
        for start in range(0, len(rows), 64):
            got += variant.predictor.predict(rows[start : start + 64], do_sample=False)
        reference = reference or got
        if truth is not None:
            pairs = zip(got, truth, strict=True)
            variant.quality = statistics.mean(g["label"] == t for g, t in pairs)
        else:
            pairs = zip(got, reference, strict=True)  # equal labels, or equal generations
            same = [g.get("label", g) == r.get("label", r) for g, r in pairs]
            variant.quality = statistics.mean(same)
        variant.size_mb = variant.size_mb or folder_mb(variant.folder)


def time_interleaved(variants: list[Variant], rows: list[dict], args: argparse.Namespace) -> None:
    """Each round: every variant once at batch 1 and (every few rounds) once at batch 64."""
    batch = (rows * (64 // max(len(rows), 1) + 1))[:64]
    every = max(args.repeats // max(args.batches, 1), 1)
    for round_ in range(args.repeats):
        for variant in variants:
            row = [rows[round_ % len(rows)]]
            started = time.perf_counter()
            variant.predictor.predict(row, do_sample=False)
            variant.latencies.append(time.perf_counter() - started)
            if round_ % every == 0:
                started = time.perf_counter()
                variant.predictor.predict(batch, do_sample=False)
                variant.rates.append(len(batch) / (time.perf_counter() - started))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if values else 0.0


def table(variants: list[Variant], quality: str) -> str:
    """The markdown table of the variants."""
    lines = [
        f"| variant | {quality} | size MB | p50 ms (batch 1) | p95 ms | rows/s (batch 64) |",
        "|---|---|---|---|---|---|",
    ]
    for v in variants:
        rate = statistics.median(v.rates) if v.rates else 0.0
        lines.append(
            f"| {v.name} | {v.quality:.4f} | {v.size_mb:.1f} | "
            f"{1e3 * percentile(v.latencies, 50):.2f} | {1e3 * percentile(v.latencies, 95):.2f} | "
            f"{rate:.1f} |"
        )
    return "\n".join(lines)


def log_mlflow(groups: list[tuple[str, list[Variant]]], args: argparse.Namespace) -> str:
    """One parent run `deploy` with a child run per variant; the parent's run id."""
    import mlflow

    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_experiment("deploy")
    with mlflow.start_run(run_name="deploy") as parent:
        mlflow.log_params({"rows": args.rows, "repeats": args.repeats, "smoke": args.smoke})
        mlflow.set_tag("machine", machine())
        for _, variants in groups:
            for v in variants:
                with mlflow.start_run(run_name=v.name, nested=True):
                    mlflow.log_metrics(
                        {
                            "deploy/quality": v.quality,
                            "deploy/size_mb": v.size_mb,
                            "deploy/p50_ms": 1e3 * percentile(v.latencies, 50),
                            "deploy/p95_ms": 1e3 * percentile(v.latencies, 95),
                            "deploy/rows_per_s": statistics.median(v.rates) if v.rates else 0.0,
                        }
                    )
        return parent.info.run_id


def machine() -> str:
    """The CPU and core count this ran on."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    model = names[0] if names else platform.processor()
    return f"{model}, {os.cpu_count()} cores"


def parse() -> argparse.Namespace:
    """Command-line options (see the module doc)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", help="run folder of the classifier (the freeze recipe)")
    parser.add_argument("--pruned", nargs="*", default=[], help="run folders of pruned models")
    parser.add_argument("--distilled", nargs="*", default=[], help="run folders of students")
    parser.add_argument("--decoder", help="run folder of a decoder run (the tiny Mistral)")
    parser.add_argument("--llama-cpp", default="", help="llama.cpp source for GGUF exports")
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=100, help="batch-1 calls per variant")
    parser.add_argument("--batches", type=int, default=10, help="batch-64 calls per variant")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/deploy.md"))
    parser.add_argument("--smoke", action="store_true", help="a few rows and calls; no table")
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.repeats, args.batches = 8, 2, 1
    return args


def main() -> None:
    """Build every variant, score, time interleaved, write the table, log to MLflow."""
    args = parse()
    groups: list[tuple[str, list[Variant]]] = []
    with tempfile.TemporaryDirectory() as scratch:
        for run, build in (
            (args.classifier, classifier_variants),
            (args.decoder, decoder_variants),
        ):
            if not run:
                continue
            rows, truth = split_rows(Path(run), args.rows)
            variants = build(args, Path(scratch))
            score(variants, rows, truth)
            time_interleaved(variants, rows, args)
            groups.append(("accuracy" if truth else "agreement with fp32", variants))
        run_id = log_mlflow(groups, args)
    command = " ".join(["python", "benchmarks/deploy.py", *sys.argv[1:]])
    when = time.strftime("%Y-%m-%d %H:%M")
    report = [f"# Deployment table\n\n{when}, {machine()}; MLflow parent run {run_id}.\n"]
    report[0] += f"\n`{command}`\n"
    report += [table(variants, quality) for quality, variants in groups]
    print("\n\n".join(report))
    if not args.smoke:
        Path(args.out).write_text("\n\n".join(report) + "\n")


if __name__ == "__main__":
    main()
