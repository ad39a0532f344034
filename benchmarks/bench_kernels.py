"""Kernel microbenchmarks: every implementation of RMSNorm, RoPE and attention a user could pick.

For each op and mode (forward, backward, both) it times the Triton kernel (CUDA), flash-attn (when
installed), the CPU fast path, the plain `*_ref`, `torch.compile(*_ref)` and the transformers
implementation (its RMSNorm modules, `apply_rotary_pos_emb`, and `sdpa_attention_forward` with the
mask `create_sliding_window_causal_mask` builds), in the same run, and reports GB/s for the
memory-bound ops, TFLOP/s for attention (useful FLOPs: only the (query, key) pairs the mask allows,
backward counted as 2.5x forward as flash-attn does) and the speed-up over transformers.

The attention cases are Gemma 3 1B's heads (4 query heads, 1 KV head, head_dim 256) with its local
window W=512 at T = 2048, 4096, 8192: on CPU transformers pays O(T^2) for such a layer, the blockwise
path O(T x W). CPU runs default to fp32 (an AVX2-only CPU multiplies bf16 ~100x slower than fp32).

    python benchmarks/bench_kernels.py [--device cuda] [--dtype bf16] [--repeats 3] [--no-compile] [--report NAME]
Writes results/<NAME, default bench_kernels>-<device>.md and .csv.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from report import device_tag, machine_line, write_report  # noqa: E402

from minibridge.kernels import HAS_FLASH_ATTN, HAS_TRITON  # noqa: E402
from minibridge.kernels import apply_rope, apply_rope_ref, attention, attention_ref, rms_norm, rms_norm_ref  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, WINDOW = 4, 1, 256, 512  # Gemma 3 1B
MODES = ("fwd", "bwd", "fwd+bwd")


def timed(fn, repeats: int, device: str) -> float:
    """Median milliseconds of `fn()` after one warm-up call."""
    fn()
    samples = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def time_modes(forward, inputs, repeats, device) -> dict[str, float]:
    """fwd, bwd (backward alone, graph retained) and fwd+bwd of `forward(*inputs)` -> one tensor or a tuple."""
    leaves = [t.detach().requires_grad_() for t in inputs]

    def run():
        out = forward(*leaves)
        return torch.cat([o.flatten() for o in out]) if isinstance(out, tuple) else out.flatten()

    with torch.no_grad():
        fwd = timed(lambda: forward(*inputs), repeats, device)
    out = run()
    grad = torch.randn_like(out)
    bwd = timed(lambda: torch.autograd.grad(out, leaves, grad, retain_graph=True), repeats, device)
    both = timed(lambda: torch.autograd.grad(run(), leaves, grad), repeats, device)
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": both}


def implementations(ref, ours, hf, device: str, compile_ref: bool) -> dict:
    impls = {}
    if device.startswith("cuda") and HAS_TRITON:
        impls["triton"] = lambda *a: ours(*a, backend="triton")
    if not device.startswith("cuda"):
        impls["cpu path"] = lambda *a: ours(*a, backend="cpu")
    impls["ref"] = ref
    if compile_ref:
        impls["compile(ref)"] = torch.compile(ref, dynamic=False)
    impls["transformers"] = hf
    return impls


def bench_rms_norm(args, rows: list):
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    for family, tokens, hidden in (("llama", 4096, 2048), ("gemma", 4096, 1152)):
        gemma = family == "gemma"
        hf_module = (Gemma3RMSNorm(hidden, eps=1e-6) if gemma else LlamaRMSNorm(hidden, eps=1e-5)).to(args.device, args.dtype)
        eps = hf_module.eps if gemma else hf_module.variance_epsilon
        x = torch.randn(tokens, hidden, device=args.device, dtype=args.dtype)
        w = hf_module.weight.detach().clone()

        def hf(x, w):  # the module's own forward, on the weight tensor being differentiated
            return torch.func.functional_call(hf_module, {"weight": w}, (x,))

        impls = implementations(lambda x, w: rms_norm_ref(x, w, eps, gemma),
                                lambda x, w, backend: rms_norm(x, w, eps, gemma, backend=backend),
                                hf, args.device, args.compile)
        moved = {"fwd": 2 * x.nbytes, "bwd": 3 * x.nbytes, "fwd+bwd": 5 * x.nbytes}  # x, y | x, dy, dx
        _measure(rows, "rms_norm", f"{family} ({tokens}, {hidden})", impls, (x, w), args, bytes_moved=moved)


def bench_rope(args, rows: list):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from minibridge.models.common import rope_tables
    from minibridge.models.config import RopeConfig

    tokens = 4096
    q = torch.randn(1, tokens, HEADS, HEAD_DIM, device=args.device, dtype=args.dtype)
    k = torch.randn(1, tokens, KV_HEADS, HEAD_DIM, device=args.device, dtype=args.dtype)
    cos, sin = rope_tables(RopeConfig(theta=10_000.0), HEAD_DIM, torch.arange(tokens, device=args.device)[None],
                           torch.float32)

    def hf(q, k):  # transformers takes (B, H, T, D) and tables in the activations' dtype
        qo, ko = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos.to(q.dtype), sin.to(q.dtype))
        return qo.transpose(1, 2), ko.transpose(1, 2)

    impls = implementations(lambda q, k: apply_rope_ref(q, k, cos, sin),
                            lambda q, k, backend: apply_rope(q, k, cos, sin, backend=backend),
                            hf, args.device, args.compile)
    qk = q.nbytes + k.nbytes
    moved = {"fwd": 2 * qk, "bwd": 2 * qk, "fwd+bwd": 4 * qk}
    _measure(rows, "rope", f"q {tuple(q.shape)}, k {tuple(k.shape)}", impls, (q, k), args, bytes_moved=moved)


def bench_attention(args, rows: list):
    from transformers import Gemma3TextConfig
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import create_sliding_window_causal_mask

    config = Gemma3TextConfig(sliding_window=WINDOW, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                              head_dim=HEAD_DIM, hidden_size=64)
    config._attn_implementation = "sdpa"
    layer = torch.nn.Module()
    layer.num_key_value_groups, layer.is_causal, layer.layer_idx = HEADS // KV_HEADS, True, 0
    scale = HEAD_DIM**-0.5
    for tokens in args.seqs:
        g = torch.Generator(device=args.device).manual_seed(tokens)
        q = torch.randn(1, tokens, HEADS, HEAD_DIM, device=args.device, dtype=args.dtype, generator=g)
        k, v = (torch.randn(1, tokens, KV_HEADS, HEAD_DIM, device=args.device, dtype=args.dtype, generator=g)
                for _ in range(2))
        embeds = torch.empty(1, tokens, 64, device=args.device, dtype=args.dtype)
        mask = create_sliding_window_causal_mask(config, embeds, None, None,
                                                 position_ids=torch.arange(tokens, device=args.device)[None])

        def hf(q, k, v):  # what Gemma3Attention does around its kernel call: (B, H, T, D) in and out
            out, _ = sdpa_attention_forward(layer, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                            mask, scaling=scale)
            return out

        impls = implementations(lambda q, k, v: attention_ref(q, k, v, window=WINDOW, scale=scale),
                                lambda q, k, v, backend: attention(q, k, v, window=WINDOW, scale=scale, backend=backend),
                                hf, args.device, args.compile and tokens == min(args.seqs))
        if HAS_FLASH_ATTN and args.device.startswith("cuda") and args.dtype != torch.float32:
            impls["flash-attn"] = lambda q, k, v: attention(q, k, v, window=WINDOW, scale=scale, backend="flash")
        if tokens > 4096 and not args.device.startswith("cuda"):
            impls.pop("ref")  # (T, T) scores in fp32 and their gradients: GBs and minutes on CPU
        pairs = sum(min(p + 1, WINDOW) for p in range(tokens))
        fwd_flops = 4 * pairs * HEADS * HEAD_DIM  # QK^T and PV, 2 FLOPs per multiply-add
        flops = {"fwd": fwd_flops, "bwd": 2.5 * fwd_flops, "fwd+bwd": 3.5 * fwd_flops}
        _measure(rows, "attention", f"local W={WINDOW}, T={tokens}", impls, (q, k, v), args, flops=flops)



def _measure(rows, op, case, impls, inputs, args, bytes_moved=None, flops=None):
    """Implementations timed round-robin, keeping each one's fastest round: whichever runs first no longer
    pays alone for the process's first large allocations and thread start-up (a first-timed Llama RMSNorm
    forward once read 0.18x of transformers, 1.0x when timed second)."""
    results = {}
    for _ in range(args.rounds):
        for name, fn in impls.items():
            times = time_modes(fn, inputs, args.repeats, args.device)
            results[name] = {m: min(t, results.get(name, times)[m]) for m, t in times.items()}
    for name in impls:
        print(f"  {op:9s} {case:32s} {name:13s} " + "  ".join(f"{m} {results[name][m]:9.2f} ms" for m in MODES),
              flush=True)
    for name, times in results.items():
        for mode in MODES:
            ms = times[mode]
            rate = (f"{bytes_moved[mode] / ms / 1e6:.1f} GB/s" if bytes_moved
                    else f"{flops[mode] / ms / 1e9:.3f} TFLOP/s")
            speedup = results["transformers"][mode] / ms
            rows.append((op, case, name, mode, ms, rate, speedup))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default=None)
    parser.add_argument("--seqs", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2,
                        help="every implementation timed in turn this many times; each one's fastest round counts")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--ops", nargs="+", default=["rms_norm", "rope", "attention"])
    parser.add_argument("--report", default="bench_kernels", help="name of the report in benchmarks/results/")
    args = parser.parse_args()
    on_gpu = args.device.startswith("cuda")
    args.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or ("bf16" if on_gpu else "fp32")]
    torch.manual_seed(0)
    rows: list = []
    for op in args.ops:
        {"rms_norm": bench_rms_norm, "rope": bench_rope, "attention": bench_attention}[op](args, rows)

    dtype = str(args.dtype).removeprefix("torch.")
    machine = device_tag(args.device) if on_gpu else machine_line()
    command = " ".join(["python", "benchmarks/bench_kernels.py", *sys.argv[1:]])
    lines = [f"# Kernel microbenchmarks ({machine}; {dtype}, median of {args.repeats}, best of {args.rounds} rounds)", "",
             f"`{command}`; speed-up = transformers' time / this time, same run.", "",
             "| op | case | implementation | mode | ms | rate | speed-up vs transformers |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {op} | {case} | {name} | {mode} | {ms:.2f} | {rate} | {sp:.2f}x |"
              for op, case, name, mode, ms, rate, sp in rows]
    write_report(args.report, lines, args.device)
    csv = ["op,case,implementation,mode,ms,rate,speedup_vs_transformers"]
    csv += [f'{op},"{case}",{name},{mode},{ms:.4f},{rate},{sp:.4f}' for op, case, name, mode, ms, rate, sp in rows]
    write_report(args.report, csv, args.device, suffix="csv")


if __name__ == "__main__":
    main()
