"""Benchmark: one training step (forward, backward, optimizer) of minibridge vs transformers on CPU.

Cases (issue 14's shapes): the Llama-3.2-1B shape with 4 layers and the real 128,256 vocabulary at
sequence 2048, and the Gemma-3-1B shape with 6 layers and the real 262,144 vocabulary at 4096 and 8192;
batch 1, random weights. Each side runs in its own fresh process (`--child`), so its peak RSS (above
the post-import baseline) is its own; a process killed for lack of memory is reported as such.

Modes, each a pair run in the same invocation:

    research   what a researcher writes: `AutoBridge.from_config(...).to_model(dtype=bf16)`,
               `model(x, labels=x)`, torch.optim.AdamW on the bf16 parameters; against
               `AutoModelForCausalLM.from_config(..., dtype=bf16)` (sdpa) with the same optimizer
    trainer    the trainer's step: MixedPrecisionAdamW (fp32 master weights and gradients, ZeRO-ready),
               `model.recompute_granularity` as `--recompute` says, the allocator settings of the
               command line (minibridge.memory); against transformers with
               a hand-written fp32-master loop (fp32 copies stepped by torch AdamW, copied back into bf16)
    trainer-bf16-state  the trainer pair, minibridge's optimizer precision-aware as Megatron's
               (`optimizer.use_precision_aware_optimizer`: bf16 Adam moments, fp32 masters kept as int16
               remainders beside the bf16 parameters, fp32 main grads: 12 bytes a parameter instead of 18)
    research-fused  the research pair with `torch.optim.AdamW(fused=True)` on both sides (the default
               AdamW's per-parameter temporaries set the peak of the research pair: see the report)
    compiled   the research pair with torch.compile: minibridge per block (`to_model(compile=True)`),
               transformers `torch.compile(model)`

dtype "auto" picks bf16 when this CPU multiplies bf16 at least as fast as fp32 (AMX / AVX512-BF16),
else fp32 (an AVX2-only CPU runs bf16 matmuls at ~1 GFLOP/s). The report names the CPU capability
and the measured matmul rates.

    python benchmarks/bench_train_step.py [--modes research,trainer,compiled] [--cases llama-2048,gemma-4096,gemma-8192]
                                          [--dtype auto|bf16|fp32] [--steps 1] [--rounds 1] [--seq-divisor 1]
                                          [--recompute none] [--interleaved]

`--interleaved` adds, per pair, one process holding both models whose steps alternate: on a shared
machine whose matmul rate swings within seconds, that speed ratio is the steadier one (the separate
processes still give the memory ratio).
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import sys
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from report import best_training_step, machine_line, pick_dtype, run_child, timed_step, write_report  # noqa: E402

CASES = {"llama-2048": ("Llama-3.2-1B", 4, 2048), "gemma-4096": ("gemma-3-1b-it", 6, 4096),
         "gemma-8192": ("gemma-3-1b-it", 6, 8192)}
MODES = ("research", "research-fused", "trainer", "trainer-bf16-state", "compiled")
TRAINER_MODES = ("trainer", "trainer-bf16-state")
SIDE_MODULES = {"minibridge": ("torch", "minibridge.bridge", "minibridge.training.optimizer"),
                "hf": ("torch", "transformers")}


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def _hf_config(name: str, layers: int) -> dict:
    config = json.loads((REPO / "tests" / "data" / "hf_configs" / f"{name}.json").read_text())
    config["num_hidden_layers"] = layers
    config.pop("layer_types", None)
    return config


class MasterWeightsAdamW:
    """transformers' side of the trainer mode: fp32 copies of bf16 parameters, stepped by torch AdamW
    (fused where torch has it), gradients converted from bf16, the result copied back."""

    def __init__(self, params, lr: float):
        import torch

        self.params = [p for p in params if p.requires_grad]
        self.masters = [p.detach().float().requires_grad_() for p in self.params]
        self.inner = torch.optim.AdamW(self.masters, lr=lr, foreach=True)

    def step(self):
        import torch

        with torch.no_grad():
            for p, m in zip(self.params, self.masters):
                m.grad = p.grad.float() if p.grad is not None else None
            self.inner.step()
            for p, m in zip(self.params, self.masters):
                p.copy_(m)
                m.grad = None

    def zero_grad(self):
        for p in self.params:
            p.grad = None


def build(side: str, mode: str, case: str, dtype_name: str, seq_divisor: int, recompute: str):
    """(step function, optimizer, input ids) of one side of a pair, its model built from the case's config."""
    import torch

    torch.manual_seed(0)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    name, layers, seq = CASES[case]
    hf = _hf_config(name, layers)
    if side == "minibridge":
        from minibridge import AutoBridge
        from minibridge.bridge import config_from_hf
        from minibridge.training.optimizer import MixedPrecisionAdamW
        from minibridge.training.precision_aware import StatePrecision

        config = config_from_hf(hf)
        options = dict(compile=True) if mode == "compiled" else {}
        if mode in TRAINER_MODES:
            options["recompute"] = recompute
        model = AutoBridge.from_config(config).to_model(dtype=dtype, progress=False, **options)
        if mode in TRAINER_MODES:
            precision = StatePrecision(exp_avg_dtype="bf16", exp_avg_sq_dtype="bf16") if mode != "trainer" else None
            optimizer = MixedPrecisionAdamW(model, lr=1e-4, precision=precision)
        else:
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=mode == "research-fused")
        step_fn = lambda ids: model(ids, labels=ids)  # noqa: E731
        vocab = config.vocab_size
    else:
        import transformers

        cfg = transformers.AutoConfig.for_model(**hf)
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
        if mode in TRAINER_MODES and recompute != "none":
            model.gradient_checkpointing_enable()
        optimizer = MasterWeightsAdamW(model.parameters(), 1e-4) if mode in TRAINER_MODES else torch.optim.AdamW(
            model.parameters(), lr=1e-4, fused=mode == "research-fused")
        forward = torch.compile(model) if mode == "compiled" else model
        step_fn = lambda ids: forward(input_ids=ids, labels=ids).loss  # noqa: E731
        vocab = cfg.vocab_size
    model.train()
    return step_fn, optimizer, torch.randint(0, vocab, (1, seq // seq_divisor))


def child(side: str, mode: str, case: str, dtype_name: str, steps: int, seq_divisor: int, recompute: str) -> dict:
    if side == "minibridge" and mode in TRAINER_MODES:
        from minibridge.memory import keep_freed_memory

        keep_freed_memory()  # first, before any tensor exists, as the command lines do (minibridge.cli)
    for module in SIDE_MODULES[side]:  # the libraries are the baseline, not the peak
        importlib.import_module(module)
    base = _rss_gb()
    step_fn, optimizer, ids = build(side, mode, case, dtype_name, seq_divisor, recompute)
    best, loss = best_training_step(step_fn, optimizer, ids, steps)
    seq = ids.shape[1]
    return {"tokens_per_sec": seq / best, "step_s": best, "peak_gb": _rss_gb() - base, "loss": float(loss), "seq": seq}


def interleaved_child(mode: str, case: str, dtype_name: str, steps: int, seq_divisor: int, recompute: str) -> dict:
    """Both sides in one process, their steps taken in turn: each side's best step time (seconds).
    On a shared CPU the matmul rate swings up to 3x within seconds; steps of the two sides taken in
    turn see the same swings, where two processes minutes apart do not. Peak memory is not separable."""
    sides = {side: build(side, mode, case, dtype_name, seq_divisor, recompute) for side in ("minibridge", "hf")}
    times = {side: [] for side in sides}
    for _ in range(steps + 1):
        for side, (step_fn, optimizer, ids) in sides.items():
            times[side].append(timed_step(step_fn, optimizer, ids)[0])
    return {side: min(t[1:]) for side, t in times.items()}  # the first round warms up


def best_run(runs: list) -> dict | str:
    """One side's rounds as one result: the fastest step, the highest peak; a failed round decides."""
    failed = [r for r in runs if isinstance(r, str)]
    if failed:
        return failed[0]
    best = min(runs, key=lambda r: r["step_s"])
    return {**best, "peak_gb": max(r["peak_gb"] for r in runs)}


def interleaved_ratio(args, mode: str, case: str, dtype: str) -> str:
    """minibridge's speed over transformers' with both sides' steps taken in turn in one process."""
    if mode in TRAINER_MODES:
        return "- (the allocator settings are per process)"
    steps = max(args.steps * args.rounds, 2)
    times = run_child(__file__, "both", mode, case, dtype, steps, args.seq_divisor, args.recompute)
    if isinstance(times, str):
        return times
    print(f"steps in turn ({mode}, {case}): minibridge {times['minibridge']:.2f} s, transformers {times['hf']:.2f} s",
          flush=True)
    return f"{times['hf'] / times['minibridge']:.2f}x (best of {steps})"


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        side, mode, case, dtype, steps, divisor, recompute = sys.argv[2:9]
        run = interleaved_child if side == "both" else partial(child, side)
        print(json.dumps(run(mode, case, dtype, int(steps), int(divisor), recompute)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run each pair this many times, the two sides alternating, and keep each side's best "
                             "(on a shared machine the matmul rate swings 3x over tens of seconds)")
    parser.add_argument("--interleaved", action="store_true",
                        help="also time both sides in one process, steps in turn (the speed ratio of one machine "
                             "phase; the models of both sides must fit in memory together; not the trainer mode)")
    parser.add_argument("--seq-divisor", type=int, default=1, help="divide every sequence length (quick runs)")
    parser.add_argument("--pairs", default=None, help="mode:case,... instead of every mode x case")
    parser.add_argument("--recompute", default="none", choices=["none", "selective", "full"],
                        help="trainer mode: activation recomputation (transformers: gradient checkpointing)")
    parser.add_argument("--hf-memory-cap-gb", type=float, default=0.0,
                        help="address-space cap of the transformers process (0: none); for cases it cannot fit")
    parser.add_argument("--report", default="bench_train_step", help="name of the report in benchmarks/results/")
    args = parser.parse_args()
    pairs = ([tuple(p.split(":")) for p in args.pairs.split(",")] if args.pairs else
             [(m, c) for m in args.modes.split(",") for c in args.cases.split(",")])
    dtype = pick_dtype() if args.dtype == "auto" else args.dtype
    lines = [f"# bench_train_step ({machine_line()}; {dtype}, batch 1, best of {args.steps} step(s) after a warm-up"
             f"{f' in each of {args.rounds} alternating rounds' if args.rounds > 1 else ''})",
             "", "| mode | case | side | seq | tokens/s | step (s) | peak RSS (GB) |", "|---|---|---|---|---|---|---|"]
    if args.hf_memory_cap_gb:
        lines[0] += f"; transformers under a {args.hf_memory_cap_gb:g} GB address-space cap"
    ratios = []
    for mode, case in pairs:
        caps = {"minibridge": None, "hf": args.hf_memory_cap_gb or None}
        runs = {side: [] for side in caps}
        for _ in range(args.rounds):
            for side in caps:
                runs[side].append(run_child(__file__, side, mode, case, dtype, args.steps, args.seq_divisor,
                                            args.recompute, memory_cap_gb=caps[side]))
        results = {side: best_run(r) for side, r in runs.items()}
        for side, r in results.items():
            if isinstance(r, str):
                lines.append(f"| {mode} | {case} | {side} | - | {r} | - | - |")
            else:
                lines.append(f"| {mode} | {case} | {side} | {r['seq']} | {r['tokens_per_sec']:.1f} | "
                             f"{r['step_s']:.1f} | {r['peak_gb']:.2f} |")
            print(lines[-1], flush=True)
        mb, hf = results["minibridge"], results["hf"]
        turns = interleaved_ratio(args, mode, case, dtype) if args.interleaved else "-"
        if isinstance(mb, dict) and isinstance(hf, dict):
            ratios.append(f"| {mode} | {case} | {mb['tokens_per_sec'] / hf['tokens_per_sec']:.2f}x | {turns} | "
                          f"{mb['peak_gb'] / hf['peak_gb']:.2f}x |")
        elif isinstance(mb, dict):
            ratios.append(f"| {mode} | {case} | transformers {hf} | {turns} | minibridge {mb['peak_gb']:.2f} GB |")
    lines += ["", "| mode | case | speed minibridge / HF | same, steps in turn in one process | "
              "peak memory minibridge / HF |", "|---|---|---|---|---|", *ratios]
    write_report(args.report, lines)


if __name__ == "__main__":
    main()
