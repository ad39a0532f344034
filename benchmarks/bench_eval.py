"""Benchmark: evaluation tokens/s, `minibridge.eval`'s loop vs transformers' forward with labels, on CPU.

The Llama-3.2-1B shape of bench_generate (2 layers, the real 128,256 vocabulary), random weights saved
once by transformers; random indexed documents cut into Megatron windows by training's pipeline. Both
sides evaluate the same windows (transformers on seq_length + 1 tokens with the window's final label, so
both score the same targets); sides alternate over --repeats rounds, the best of each kept, and the
losses must agree (fp32: rel 1e-5).

    python benchmarks/bench_eval.py [--dtype auto|bf16|fp32] [--seq-length 256] [--samples 8]
                                    [--micro-batch-size 2] [--repeats 2] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_generate import DTYPES, make_checkpoint  # noqa: E402
from report import pick_dtype, write_report  # noqa: E402


def _documents(prefix: Path, vocab: int, tokens: int) -> str:
    import numpy as np

    from minibridge.training.data import IndexedDatasetWriter

    rng = np.random.default_rng(0)
    writer = IndexedDatasetWriter(prefix)
    while tokens > 0:
        n = int(rng.integers(200, 2000))
        writer.add_document(rng.integers(3, vocab, size=n).tolist())
        tokens -= n
    writer.finalize()
    return str(prefix)


def _transformers(folder, dataset, dtype, samples: int, mbs: int) -> tuple[float, float]:
    """(loss, tokens/s) of transformers on the first `samples` windows, `mbs` at a time."""
    import torch
    from transformers import AutoModelForCausalLM

    from minibridge.training.data import DataIterator

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    order = DataIterator(dataset, global_batch_size=mbs, micro_batch_size=mbs, dp_rank=0, dp_size=1)
    total, tokens, start = 0.0, 0, time.perf_counter()
    with torch.no_grad():
        for _ in range(samples // mbs):
            (b,) = order.next_global_batch()
            ids = torch.cat([b.input_ids, b.final_label[:, None].clamp(min=0)], 1)
            labels = torch.cat([b.labels, b.final_label[:, None]], 1)
            count = int((labels[:, 1:] != -100).sum())
            total += model(input_ids=ids, labels=labels).loss.double().item() * count
            tokens += count
    return total / tokens, tokens / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
    p.add_argument("--seq-length", type=int, default=256)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--micro-batch-size", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    import torch

    from minibridge.evaluation import eval_dataset, evaluate_perplexity, load_model, model_bridge
    from minibridge.parallel import ParallelConfig, initialize

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype_name = pick_dtype() if args.dtype == "auto" else args.dtype
    dtype = getattr(torch, DTYPES[dtype_name])
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_checkpoint("llama", dtype_name, Path(tmp) / "hf")
        bridge = model_bridge(str(folder), None)
        prefix = _documents(Path(tmp) / "docs", bridge.config.vocab_size, (args.seq_length + 1) * args.samples * 2)
        data = eval_dataset("indexed", [prefix], seq_length=args.seq_length, part="all")
        dims = initialize(ParallelConfig())
        chunks = load_model(bridge, None, dims, dtype, progress=False)
        ours, theirs = [], []
        for _ in range(args.repeats):
            ours.append(evaluate_perplexity(chunks, dims, data, micro_batch_size=args.micro_batch_size,
                                            max_samples=args.samples, progress=False))
            theirs.append(_transformers(folder, data, dtype, args.samples, args.micro_batch_size))
    best_ours, best_theirs = max(r.tokens_per_s for r in ours), max(r for _, r in theirs)
    same = abs(ours[0].loss - theirs[0][0]) <= 1e-5 * abs(theirs[0][0]) if dtype == torch.float32 else "n/a (bf16)"
    write_report(f"bench_eval-{dtype_name}", [
        f"# Evaluation tokens/s ({dtype_name}, {torch.get_num_threads()} threads, Llama-3.2-1B shape, 2 layers)",
        "",
        f"seq_length {args.seq_length}, {args.samples} samples, micro batch {args.micro_batch_size}, "
        f"best of {args.repeats}",
        "",
        "| side | tokens/s | loss |",
        "|------|---------:|-----:|",
        f"| minibridge.eval | {best_ours:,.0f} | {ours[0].loss:.6f} |",
        f"| transformers (labels=) | {best_theirs:,.0f} | {theirs[0][0]:.6f} |",
        "",
        f"ratio {best_ours / best_theirs:.2f}x; losses agree: {same}",
    ])


if __name__ == "__main__":
    main()
