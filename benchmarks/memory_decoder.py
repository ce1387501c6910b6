"""Peak memory (RSS) of a ~0.5B-parameter decoder under full, lora and qlora (nf4) on CPU.

    nice -n 10 python benchmarks/memory_decoder.py [--steps 3] [--seq 256] [--arch mistral]

A random-init Mistral (hidden 1024, 28 layers, GQA 16/8 heads, MLP 4096, vocab 32000: ~0.5B
parameters) is saved once in bf16 to `--model-dir`, then each method runs in a fresh subprocess:
load through tunelab's module (`method=full`, `method=lora`, and lora on a
`model.quantize=nf4` base, fp32 compute), then `--steps` AdamW steps on random tokens (batch 1).
Peak RSS is `resource.getrusage(RUSAGE_SELF).ru_maxrss` of that subprocess; a psutil sampler
also splits it into the load phase and the training phase.
Writes `benchmarks/results/memory_decoder.{md,json}`.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from the repository, nothing installed
# The three set-ups measured: (method YAML, its fields, model.quantize).
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
METHODS = {"full": ("full", {}, None), "lora": ("lora", LORA, None), "qlora": ("lora", LORA, "nf4")}
SIZE = {
    "hidden": 1024,
    "layers": 28,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
}
GIB = 1024**3


class PeakSampler:
    """Track the peak resident set size of this process between `reset` calls."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self.process, self.interval, self.peak = psutil.Process(), interval, 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def reset(self) -> int:
        """Return the peak so far (bytes) and start a new phase."""
        peak = max(self.peak, self.process.memory_info().rss)
        self.peak = 0
        return peak


def build_model(folder: Path, arch: str) -> int:
    """Save a random-init ~0.5B decoder (bf16 safetensors) once; return its parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from tools.tiny_models import decoder_config

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_dummy_tokenizer())
    tokenizer.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"})
    config = decoder_config(arch, tokenizer, initializer_range=0.02, vocab_size=32000, **SIZE)
    if (folder / "config.json").exists():
        with torch.device("meta"):
            return sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def _dummy_tokenizer():
    from tokenizers import Tokenizer, models

    return Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))


def worker(method: str, folder: Path, steps: int, seq: int, checkpointing: bool) -> dict:
    """Load the model through the method's module and train `steps` steps; measure memory."""
    import torch
    from omegaconf import OmegaConf

    from tunelab.base.schema import ModelConfig, OptimConfig
    from tunelab.config.compose import GROUP_DIRS
    from tunelab.config.validate import check_plugin

    sampler = PeakSampler()
    torch.manual_seed(0)
    model_cfg = {
        "name_or_path": str(folder),
        "max_length": seq,
        "dtype": "float32",
        "gradient_checkpointing": checkpointing,
        "quantize": METHODS[method][2],
    }
    name, fields, _ = METHODS[method]
    raw = OmegaConf.to_container(OmegaConf.load(GROUP_DIRS["method"] / f"{name}.yaml"))
    config = check_plugin("method", raw | fields, [])
    task_raw = OmegaConf.to_container(OmegaConf.load(GROUP_DIRS["task"] / "causal_lm.yaml"))
    task = check_plugin("task", task_raw, [])
    started = time.perf_counter()
    from tunelab.run.module import FineTuneModule

    model = ModelConfig.model_validate(model_cfg)
    module = FineTuneModule(task, config, model, OptimConfig(lr=1e-4))
    load_s, load_peak = time.perf_counter() - started, sampler.reset()
    trainable, total = module.parameter_counts
    params = [p for p in module.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(10, 32000, (1, seq))
    module.model.train()
    started = time.perf_counter()
    for _ in range(steps):
        loss = module.model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {
        "method": method,
        "trainable_params": trainable,
        "total_params": total,
        "load_s": round(load_s, 1),
        "step_s": round((time.perf_counter() - started) / steps, 1),
        "peak_load_gib": round(load_peak / GIB, 2),
        "peak_train_gib": round(sampler.reset() / GIB, 2),
        "ru_maxrss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 2),
        "final_loss": round(loss.item(), 3),
    }


def report(rows: list[dict], args: argparse.Namespace, n_params: int) -> str:
    """The markdown table written to `benchmarks/results/memory_decoder.md`."""
    import torch

    command = "nice -n 10 python benchmarks/memory_decoder.py " + " ".join(sys.argv[1:])
    lines = [
        "# Peak memory of a ~0.5B decoder on CPU: full vs LoRA vs QLoRA (nf4)",
        "",
        f"Model: random-init {args.arch} ({n_params / 1e6:.0f}M params, {SIZE}, vocab 32000), "
        f"fp32 compute, batch 1 x {args.seq} tokens, {args.steps} AdamW steps, gradient "
        f"checkpointing {'on' if args.gradient_checkpointing else 'off'}.",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads (2 shared "
        f"cores, no GPU), torch {torch.__version__}. Command: `{command}`",
        "",
        "| method | trainable params | peak RSS (whole process) | peak RSS while loading "
        "| peak RSS while training | s / step |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['trainable_params'] / 1e6:.1f}M / {r['total_params'] / 1e6:.0f}M"
            f" | {r['ru_maxrss_gib']:.2f} GiB | {r['peak_load_gib']:.2f} GiB "
            f"| {r['peak_train_gib']:.2f} GiB | {r['step_s']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--arch", choices=("mistral", "llama"), default="mistral")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--model-dir", default="/tmp/tunelab_memory_decoder_model")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/memory_decoder.md"))
    parser.add_argument("--worker", choices=list(METHODS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = Path(args.model_dir) / args.arch
    if args.worker:
        result = worker(args.worker, folder, args.steps, args.seq, args.gradient_checkpointing)
        print("RESULT " + json.dumps(result), flush=True)
        return
    n_params = build_model(folder, args.arch)
    rows = []
    for method in args.methods:
        flags = ["--steps", str(args.steps), "--seq", str(args.seq), "--arch", args.arch]
        flags += ["--model-dir", args.model_dir, "--worker", method]
        flags += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
        out = subprocess.run(
            [sys.executable, __file__, *flags], cwd=REPO, capture_output=True, text=True
        )
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            sys.exit(f"{method} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(line[0][len("RESULT ") :]))
        print(rows[-1], flush=True)
    text = report(rows, args, n_params)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=2))
    print(text)


if __name__ == "__main__":
    main()
