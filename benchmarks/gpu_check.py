"""Fine-tuning throughput, peak memory and MFU of random-init 7-8B decoders on one CUDA GPU.

    python benchmarks/gpu_check.py [--models mistral llama] [--methods full lora qlora]
        [--steps 10] [--warmup 3] [--batch 2] [--seq 2048] [--layers N] [--out results.json]
    python benchmarks/gpu_check.py --smoke   # tiny decoder on CPU in fp32: tests the code path

Nothing is downloaded: Mistral-7B-v0.3 and Llama-3-8B architectures are built from config with
random weights directly on the GPU in bf16, and the tokens are random ids (packed: no padding).
Without a CUDA GPU (and without `--smoke`) it prints one "skipped" line and exits 0.

Methods (gradient checkpointing on, non-reentrant; loss on every position):
    full:  all weights trained by fused AdamW; params, grads and AdamW states are all bf16
           ("pure bf16", no fp32 master weights or states: about 8 bytes per parameter).
    lora:  bf16 frozen base, peft LoRA r=16, alpha=32 on q/k/v/o/gate/up/down of every block
           (adapter weights fp32, peft's default `autocast_adapter_dtype`).
    qlora: as lora, but the block linears are bitsandbytes nf4 Linear4bit (double quant, bf16
           compute), quantised in place from the bf16 weights; embeddings/lm_head stay bf16.

FLOPs per token, N = matmul parameters (blocks + lm_head, not the embedding lookup):
    model FLOPs (MFU): 6N (full) or 4N (frozen base: forward 2N + input grads 2N; adapter weight
        grads ignored), plus attention 12 * layers * seq * hidden (PaLM convention, forward +
        backward, no causal halving). Recompute is not counted.
    hardware FLOPs (HFU): model FLOPs + recompute of the checkpointed blocks, 2 * N_blocks +
        4 * layers * seq * hidden.
Peak memory is `torch.cuda.max_memory_allocated` over the warm-up and timed steps (reset after
setup, so QLoRA's transient bf16 copy is not counted); "setup GiB" is what is allocated before the
first step (weights, adapters; AdamW states come at the first step).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

# fmt: off
ARCH = {  # name -> (config class, vocab, max positions, rope theta)
    "mistral": ("MistralConfig", 32768, 32768, 1e6),  # Mistral-7B-v0.3 (no sliding window)
    "llama": ("LlamaConfig", 128256, 8192, 500000.0),  # Llama-3-8B
}
COMMON = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
          "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,
          "tie_word_embeddings": False, "use_cache": False}
SMOKE = {"vocab_size": 1024, "hidden_size": 256, "intermediate_size": 512,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
METHODS = ["full", "lora", "qlora"]
NF4 = {"quant_type": "nf4", "compress_statistics": True}  # nf4 with double quantisation
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PEAK_TFLOPS = (  # dense bf16 TFLOP/s by device-name substring, first match wins
    ("H200 NVL", 835.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0),
    ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0), ("4090", 165.0),
)
# fmt: on
# torchtune README, "Memory and training speed": Llama 3.1 8B on 1x RTX 4090, batch 2, packed
# seq 2048, torch.compile on, measured over one full epoch.
TORCHTUNE_4090 = {"full": (18.9, 1650), "lora": (16.2, 3083), "qlora": (7.4, 2413)}
GIB = 1024**3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; unset --steps/--warmup/--seq get full or smoke defaults."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mistral", "llama"], choices=list(ARCH))
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (10; smoke 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (3; smoke 1)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=None, help="tokens per row (2048; smoke 64)")
    parser.add_argument("--layers", type=int, default=None, help="override number of layers")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, fp32")
    args = parser.parse_args(argv)
    smoke = args.smoke
    args.steps = args.steps if args.steps is not None else (2 if smoke else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if smoke else 3)
    args.seq = args.seq if args.seq is not None else (64 if smoke else 2048)
    return args


def build_config(name: str, smoke: bool, layers: int | None):
    """Return the transformers config of `name`: full size, or tiny under `smoke`."""
    import transformers

    cls_name, vocab, positions, theta = ARCH[name]
    kwargs = {**COMMON, "vocab_size": vocab, "max_position_embeddings": positions}
    kwargs.update(rope_theta=theta, **(SMOKE if smoke else {}))
    if name == "mistral":
        kwargs["sliding_window"] = None
    if layers is not None:
        kwargs["num_hidden_layers"] = layers
    return getattr(transformers, cls_name)(**kwargs)


def flops_per_token(cfg, method: str, seq: int) -> tuple[float, float, int]:
    """Return (model FLOPs, hardware FLOPs with recompute, N) per trained token."""
    h, n_layers = cfg.hidden_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    n_blocks = n_layers * (2 * h * h + 2 * h * kv + 3 * h * cfg.intermediate_size)
    n = n_blocks + cfg.vocab_size * h
    attention = 12 * n_layers * seq * h
    model = (6 if method == "full" else 4) * n + attention
    return model, model + 2 * n_blocks + attention / 3, n


def build_model(cfg, dtype: torch.dtype, device: torch.device):
    """Random-init causal LM built directly on `device` in `dtype`, checkpointing on."""
    import transformers
    from transformers import AutoModelForCausalLM

    major = int(transformers.__version__.split(".")[0])
    key = "dtype" if major >= 5 else "torch_dtype"
    with device:
        model = AutoModelForCausalLM.from_config(cfg, **{key: dtype})
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.train()
    return model


def quantize_blocks(model, compute_dtype: torch.dtype) -> None:
    """Swap every nn.Linear inside the decoder blocks for an nf4 bnb Linear4bit, in place."""
    import bitsandbytes as bnb

    for block in model.model.layers:
        for parent in list(block.modules()):
            for child_name, child in list(parent.named_children()):
                if type(child) is not torch.nn.Linear:
                    continue
                shape, bias = (child.in_features, child.out_features), child.bias is not None
                q = bnb.nn.Linear4bit(*shape, bias, compute_dtype, device="meta", **NF4)
                weight = child.weight.data  # .to() quantises on the weight's own device
                q.weight = bnb.nn.Params4bit(weight, requires_grad=False, **NF4).to(weight.device)
                if child.bias is not None:
                    q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
                setattr(parent, child_name, q)
    model.is_loaded_in_4bit = True  # peft dispatches its bnb 4-bit LoRA layer on this flag


def prepare(name: str, method: str, args, device: torch.device):
    """Build the model for `method` and its fused AdamW; return (model, optimizer, cfg)."""
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    cfg = build_config(name, args.smoke, args.layers)
    model = build_model(cfg, dtype, device)
    if method == "qlora":
        quantize_blocks(model, dtype)
    if method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        model.requires_grad_(False)
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS)
        model = get_peft_model(model, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    return model, optimizer, cfg


def train_steps(model, optimizer, tokens: torch.Tensor, steps: int) -> float:
    """Run `steps` optimizer steps on `tokens`; return the last loss."""
    loss = torch.zeros(())
    for _ in range(steps):
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def run_config(name: str, method: str, args, device: torch.device, peak: float | None) -> dict:
    """Set up one (model, method), time `args.steps` steps after warm-up, return its metrics."""
    model, optimizer, cfg = prepare(name, method, args, device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (args.batch, args.seq)
    tokens = torch.randint(0, cfg.vocab_size, shape, device=device, generator=gen)
    cuda = device.type == "cuda"
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    setup_gib = torch.cuda.memory_allocated(device) / GIB if cuda else None
    sync = torch.cuda.synchronize if cuda else lambda: None
    train_steps(model, optimizer, tokens, args.warmup)
    sync()
    start = time.perf_counter()
    loss = train_steps(model, optimizer, tokens, args.steps)
    sync()
    step_s = (time.perf_counter() - start) / max(args.steps, 1)
    tok_s = args.batch * args.seq / step_s
    model_flops, hw_flops, n = flops_per_token(cfg, method, args.seq)
    mfu = tok_s * model_flops / (peak * 1e12) if peak else None
    return {
        "status": "ok",
        "layers": cfg.num_hidden_layers,
        "n_matmul_params": n,
        "trainable_params": trainable,
        "setup_gib": setup_gib,
        "peak_gib": torch.cuda.max_memory_allocated(device) / GIB if cuda else None,
        "step_s": step_s,
        "tokens_per_s": tok_s,
        "mfu": mfu,
        "hfu": mfu * hw_flops / model_flops if mfu else None,
        "loss": loss,
    }


def free(device: torch.device) -> None:
    """Release what the last config left behind and reset the peak-memory counter."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def safe_run(name: str, method: str, args, device: torch.device, peak: float | None) -> dict:
    """`run_config`, but an OOM or other failure becomes the row's status; memory is freed."""
    row: dict = {"model": name, "method": method}
    try:
        row.update(run_config(name, method, args, device, peak))
    except torch.cuda.OutOfMemoryError:
        row["status"] = "OOM"
    except Exception as exc:  # one broken config must not lose the others
        row["status"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    free(device)  # outside `except`: the traceback (and its tensors) is gone by now
    return row


def peak_tflops(override: float | None, device: torch.device) -> float | None:
    """Dense bf16 peak of `device` in TFLOP/s: `override`, else looked up by device name."""
    if override or device.type != "cuda":
        return override
    name = torch.cuda.get_device_name(device)
    return next((tf for key, tf in PEAK_TFLOPS if key in name), None)


def fmt(value, spec: str) -> str:
    """`format(value, spec)`, or "-" for None."""
    return "-" if value is None else format(value, spec)


def markdown(rows: list[dict]) -> str:
    """Results as a markdown table, followed by torchtune's RTX 4090 reference figures."""
    lines = [
        "| model | method | layers | N (B) | trainable (M) | setup GiB | peak GiB | step s "
        "| tok/s | MFU % | HFU % | loss | status |",
        "|" + "---|" * 13,
    ]
    for r in rows:
        cells = [r["model"], r["method"], fmt(r.get("layers"), "d")]
        cells += [fmt(r.get("n_matmul_params", 0) / 1e9 or None, ".2f")]
        cells += [fmt(r.get("trainable_params", 0) / 1e6 or None, ".1f")]
        cells += [fmt(r.get(k), ".2f") for k in ("setup_gib", "peak_gib", "step_s")]
        cells += [fmt(r.get("tokens_per_s"), ",.0f")]
        cells += [fmt(r[k] * 100 if r.get(k) else None, ".1f") for k in ("mfu", "hfu")]
        cells += [fmt(r.get("loss"), ".3f"), r["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    ref = "; ".join(f"{m} {g} GiB / {t:,} tok/s" for m, (g, t) in TORCHTUNE_4090.items())
    lines += [
        "",
        f"Reference, torchtune README 'Memory and training speed' (Llama 3.1 8B, 1x RTX 4090, "
        f"batch 2, packed seq 2048, torch.compile): {ref}.",
    ]
    return "\n".join(lines)


def environment(device: torch.device, peak: float | None, args) -> dict:
    """Device, peak, library versions, arguments and FLOPs convention for the JSON report."""
    import bitsandbytes
    import peft
    import transformers

    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "peak_tflops_bf16_dense": peak,
        "versions": {m.__name__: m.__version__ for m in (torch, transformers, peft, bitsandbytes)},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "flops": "MFU: 6N full / 4N adapters + 12*L*s*h attention (no causal halving), "
        "recompute excluded; HFU adds 2*N_blocks + 4*L*s*h recompute",
    }


def main(argv: list[str] | None = None) -> int:
    """Run every (model, method); print a markdown table; return the exit status (0)."""
    args = parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: skipped: no CUDA GPU (torch.cuda.is_available() is False)")
        return 0
    torch.manual_seed(0)
    device = torch.device("cpu") if args.smoke else torch.device("cuda", 0)
    peak = peak_tflops(args.peak_tflops, device)
    started, rows = time.perf_counter(), []
    report = {"environment": environment(device, peak, args), "results": rows}
    for name in args.models:
        for method in args.methods:
            rows.append(row := safe_run(name, method, args, device, peak))
            tok_s = fmt(row.get("tokens_per_s"), ",.0f")
            print(f"gpu_check: {name}/{method}: {row['status']}, {tok_s} tok/s", file=sys.stderr)
            report["elapsed_s"] = time.perf_counter() - started
            if args.out:  # rewritten after every config, so a crash keeps what was measured
                args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(rows))
    elapsed, device_name = time.perf_counter() - started, report["environment"]["device"]
    print(f"\n{device_name}, dense bf16 peak {fmt(peak, '.0f')} TFLOP/s, {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
