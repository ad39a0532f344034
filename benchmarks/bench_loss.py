"""Benchmark: the fused output layer + cross entropy (forward and backward) by chunk size, against
transformers' loss (one (tokens x vocab) product, fp32 cross entropy, autograd backward), on CPU.

The shape is Llama-3.2-1B's output layer (hidden 2048, real 128,256 vocabulary) at `--tokens` tokens,
random weights, in bf16 where this CPU supports it. Each budget is `ChunkedOutputHead(chunk_bytes)`:
the default `models.output.LOSS_CHUNK_BYTES` and smaller ones. Every variant runs once per round,
the variants in turn, and keeps its best round: on a shared CPU the matmul rate swings within seconds,
and variants measured in turn see the same swings. Ratios are transformers' time over each variant's.

Each chunk's three products (logits, d hidden, d weight) stream the whole (vocab x hidden) weight, and
the weight gradient is read and written once more per chunk: more chunks mean more weight traffic for
the same FLOPs (6 x tokens x vocab x hidden: 3.2 TFLOP at 2048 tokens; the report prints their rate
next to the machine's matmul rate).

    python benchmarks/bench_loss.py [--tokens 2048] [--rounds 3] [--dtype auto|bf16|fp32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from report import machine_line, pick_dtype, write_report  # noqa: E402

from minibridge.models.output import LOSS_CHUNK_BYTES, ChunkedOutputHead, OutputHead  # noqa: E402

HIDDEN, VOCAB = 2048, 128_256  # Llama 3's output layer
BUDGETS = (LOSS_CHUNK_BYTES // 8, LOSS_CHUNK_BYTES // 4, LOSS_CHUNK_BYTES // 2, LOSS_CHUNK_BYTES)


def seconds(head: OutputHead, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> float:
    """One forward + backward of `head`'s loss."""
    hidden.grad = weight.grad = None
    start = time.perf_counter()
    head.loss(hidden, weight, targets).backward()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    args = parser.parse_args()
    dtype_name = pick_dtype() if args.dtype == "auto" else args.dtype
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.tokens, HIDDEN, generator=generator).to(dtype).requires_grad_()
    weight = (torch.randn(VOCAB, HIDDEN, generator=generator) * 0.02).to(dtype).requires_grad_()
    targets = torch.randint(0, VOCAB, (args.tokens,), generator=generator)
    variants = {"transformers (full logits)": OutputHead()}
    for budget in BUDGETS:
        head = ChunkedOutputHead(budget)
        chunk, part = head.token_counts(weight)
        default = " (default)" if budget == LOSS_CHUNK_BYTES else ""
        variants[f"fused, {budget // 2**20} MB chunks{default}: {chunk} tokens, {part}-token fp32 parts"] = head
    for head in variants.values():  # a warm-up round (allocator, first-touch pages)
        seconds(head, hidden, weight, targets)
    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, head in variants.items():
            times[name].append(seconds(head, hidden, weight, targets))
    best = {name: min(t) for name, t in times.items()}
    reference = best["transformers (full logits)"]
    lines = [f"# bench_loss ({machine_line()}; {dtype_name}, output layer {VOCAB} x {HIDDEN}, {args.tokens} tokens, "
             f"forward + backward, best of {args.rounds} rounds taken in turn)", "",
             "| variant | seconds | GFLOP/s of the three products | speed vs transformers |", "|---|---|---|---|"]
    flops = 6 * args.tokens * VOCAB * HIDDEN  # logits, d hidden, d weight: 2 x tokens x vocab x hidden each
    for name, s in best.items():
        lines.append(f"| {name} | {s:.2f} | {flops / s / 1e9:.0f} | {reference / s:.2f}x |")
        print(lines[-1], flush=True)
    write_report("bench_loss", lines)


if __name__ == "__main__":
    main()
