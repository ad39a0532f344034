"""Benchmark: one training step (forward, backward, AdamW) of minibridge vs transformers on CPU.

Cases (the issue's shapes): a Llama-3.2-1B shape with 4 layers and the real 128,256 vocabulary at
sequence 2048, and a Gemma-3-1B shape with 6 layers and the real 262,144 vocabulary at sequences 4096
and 8192; batch 1. Each side runs in its own fresh process (`--child`), so peak RSS is its own; a
process killed for lack of memory is reported as such. minibridge runs its training configuration:
the fused chunked output layer + loss (no full logits), AdamW with fp32 master weights for bf16.
transformers runs `AutoModelForCausalLM.from_config(...)(input_ids, labels=...)` with sdpa and
torch.optim.AdamW on the same dtype.

dtype "auto" picks bf16 when this CPU multiplies bf16 at least as fast as fp32 (AMX / AVX512-BF16),
else fp32: on an AVX2-only CPU torch's bf16 matmul runs at well under 1 GFLOP/s (vs ~40 in fp32), and
a bf16 step of these shapes would take hours.

    python benchmarks/bench_train_step.py [--dtype auto|bf16|fp32] [--cases llama-2048,gemma-4096,gemma-8192]
                                          [--steps 2] [--seq-divisor 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from report import best_training_step, run_child, write_report  # noqa: E402

CASES = {"llama-2048": ("Llama-3.2-1B", 4, 2048), "gemma-4096": ("gemma-3-1b-it", 6, 4096),
         "gemma-8192": ("gemma-3-1b-it", 6, 8192)}


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def _hf_config(name: str, layers: int) -> dict:
    config = json.loads((REPO / "tests" / "data" / "hf_configs" / f"{name}.json").read_text())
    config["num_hidden_layers"] = layers
    config.pop("layer_types", None)
    return config


def child(side: str, case: str, dtype_name: str, steps: int, seq_divisor: int) -> dict:
    import torch

    torch.manual_seed(0)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    name, layers, seq = CASES[case]
    seq //= seq_divisor
    hf = _hf_config(name, layers)
    if side == "minibridge":
        from minibridge import AutoBridge
        from minibridge.bridge import config_from_hf
        from minibridge.training.optimizer import MixedPrecisionAdamW

        base = _rss_gb()
        config = config_from_hf(hf)
        model = AutoBridge.from_config(config).to_model(dtype=dtype, loss_chunk_bytes=256 * 2**20)  # the trainer's
        optimizer = MixedPrecisionAdamW(model, lr=1e-4)
        step_fn = lambda ids: model(ids, labels=ids)  # noqa: E731
        vocab = config.vocab_size
    else:
        import transformers

        base = _rss_gb()
        cfg = transformers.AutoConfig.for_model(**hf)
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        step_fn = lambda ids: model(input_ids=ids, labels=ids).loss  # noqa: E731
        vocab = cfg.vocab_size
    model.train()
    ids = torch.randint(0, vocab, (1, seq))
    best, loss = best_training_step(step_fn, optimizer, ids, steps)
    return {"tokens_per_sec": seq / best, "step_s": best, "peak_gb": _rss_gb() - base, "loss": float(loss), "seq": seq}


def pick_dtype() -> str:
    import torch

    rates = {}
    for dt in (torch.float32, torch.bfloat16):
        a = torch.randn(512, 512, dtype=dt)
        a @ a
        start = time.perf_counter()
        a @ a
        rates[dt] = 1 / (time.perf_counter() - start)
    return "bf16" if rates[torch.bfloat16] >= rates[torch.float32] else "fp32"


def run_side(side, case, dtype, steps, seq_divisor) -> dict | str:
    return run_child(__file__, side, case, dtype, steps, seq_divisor)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        side, case, dtype, steps, divisor = sys.argv[2:7]
        print(json.dumps(child(side, case, dtype, int(steps), int(divisor))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--seq-divisor", type=int, default=1, help="divide every sequence length (quick runs)")
    args = parser.parse_args()
    dtype = pick_dtype() if args.dtype == "auto" else args.dtype
    lines = [f"# bench_train_step (CPU, {dtype}, batch 1, best of {args.steps} step(s) after a warm-up)", "",
             "| case | side | seq | tokens/s | step (s) | peak RSS (GB) |", "|---|---|---|---|---|---|"]
    ratios, efficiency = [], []
    import torch

    from minibridge.bridge import config_from_hf
    from minibridge.training.flops import measure_cpu_matmul_flops, model_flops_per_token

    matmul_rate = measure_cpu_matmul_flops({"bf16": torch.bfloat16, "fp32": torch.float32}[dtype], seconds=2.0)
    for case in args.cases.split(","):
        results = {side: run_side(side, case, dtype, args.steps, args.seq_divisor) for side in ("minibridge", "hf")}
        for side, r in results.items():
            if isinstance(r, str):
                lines.append(f"| {case} | {side} | - | {r} | - | - |")
            else:
                lines.append(f"| {case} | {side} | {r['seq']} | {r['tokens_per_sec']:.1f} | {r['step_s']:.1f} | {r['peak_gb']:.2f} |")
            print(lines[-1], flush=True)
        for side, r in results.items():  # achieved model FLOP/s as a fraction of this CPU's measured matmul rate
            if isinstance(r, dict):
                name, layers, _ = CASES[case]
                achieved = r["tokens_per_sec"] * model_flops_per_token(config_from_hf(_hf_config(name, layers)), r["seq"])
                efficiency.append(f"| {case} | {side} | {achieved / 1e9:.2f} | {achieved / matmul_rate:.1%} |")
        mb, hf = results["minibridge"], results["hf"]
        if isinstance(mb, dict) and isinstance(hf, dict):
            ratios.append(f"| {case} | {mb['tokens_per_sec'] / hf['tokens_per_sec']:.2f}x | {mb['peak_gb'] / hf['peak_gb']:.2f}x |")
    lines += ["", "| case | throughput minibridge / HF | peak memory minibridge / HF |", "|---|---|---|", *ratios]
    lines += ["", f"Model FLOP/s (forward + backward, attention within the window) against this CPU's measured {dtype} "
              f"matmul rate of {matmul_rate / 1e9:.1f} GFLOP/s:", "",
              "| case | side | achieved GFLOP/s | fraction of the matmul rate |", "|---|---|---|---|", *efficiency]
    write_report("bench_train_step", lines)


if __name__ == "__main__":
    main()
