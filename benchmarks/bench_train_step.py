"""Benchmark: one training step (forward, backward, optimizer) of minibridge vs transformers, CPU or CUDA.

Cases (issue 14's shapes): the Llama-3.2-1B shape with 4 layers and the real 128,256 vocabulary at
sequence 2048, and the Gemma-3-1B shape with 6 layers and the real 262,144 vocabulary at 4096 and 8192;
batch 1, random weights. On CPU each side runs in its own fresh process (`--child`), so its peak RSS
(above the post-import baseline) is its own; a process killed for lack of memory is reported as such.

`--device cuda`: the same pairs in bf16 on one GPU with every layer of the real models (Llama-3.2-1B's
16, Gemma-3-1B's 26; `--layers` overrides), the sides one after the other in this process: CUDA's
allocator statistics reset between them, so each side's peak (`torch.cuda.max_memory_allocated`, tensors
only) is its own, and each result is printed as it comes (a run cut off keeps them). Every row also
gives MFU: model FLOPs (`minibridge.training.flops`, PaLM's convention) over the peak, the GPU's
datasheet bf16 rate (CUDA) or this CPU's measured matmul rate in the step's dtype. Beside each speed
ratio stands its ceiling on this machine (`speed_ceiling`): the ratio a step would reach whose matrix
products all ran at that peak, the optimizer step being transformers' own (issue 33 asked for 1.5x where
its machine's matrix products alone allowed 1.42x).

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
    research-in-backward  the research pair, minibridge's AdamW stepped inside backward parameter by parameter
               (minibridge.training.step_in_backward: the same update, no gradient for every parameter at once)
    research-fused  the research pair with `torch.optim.AdamW(fused=True)` on both sides (the default
               AdamW's per-parameter temporaries set the peak of the research pair: see the report)
    compiled   the research pair with torch.compile: minibridge per block (`to_model(compile=True)`),
               transformers `torch.compile(model)`

dtype "auto" picks bf16 when this CPU multiplies bf16 at least as fast as fp32 (AMX / AVX512-BF16),
else fp32 (an AVX2-only CPU runs bf16 matmuls at ~1 GFLOP/s). The report names the CPU capability
and the measured matmul rates.

    python benchmarks/bench_train_step.py [--modes research,trainer,compiled] [--cases llama-2048,gemma-4096,gemma-8192]
                                          [--dtype auto|bf16|fp32] [--steps 1] [--rounds 1] [--seq-divisor 1]
                                          [--recompute none] [--interleaved] [--device cpu|cuda] [--layers N]

`--interleaved` (CPU) adds, per pair, one process holding both models whose steps alternate: on a shared
machine whose matmul rate swings within seconds, that speed ratio is the steadier one (the separate
processes still give the memory ratio).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import resource
import sys
import traceback
from functools import partial
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from report import (  # noqa: E402
    best_training_step, cpu_matmul_rates, device_tag, machine_line, pick_dtype, run_child, timed_step, write_report,
)
from train_step_sides import (  # noqa: E402  (the pairs' sides; estimate_train_memory reads them from here)
    CASES, MODES, SIDE_MODULES, SIDES, TRAINER_MODES, build, case_config,
)


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


class PeakMemory:
    """One side's peak memory in GB, from the moment this is made.

    cpu: the process's peak RSS above its RSS now (a peak RSS never goes down: one process per side).
    cuda: `torch.cuda.max_memory_allocated` above what is allocated now, the statistics reset and the
    previous side's cached blocks released first: tensors only (not the CUDA context or the caching
    allocator's slack), so the sides of a pair can follow each other in one process."""

    LABELS = {"cpu": "peak RSS (GB)", "cuda": "peak CUDA memory allocated (GB)"}

    def __init__(self, device: str):
        self.device = torch.device(device)
        if self.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device) / 2**30
        else:
            self.start = _rss_gb()

    def peak_gb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30 - self.start
        return _rss_gb() - self.start


def measure(side: str, mode: str, hf: dict, seq: int, dtype_name: str, steps: int, recompute: str,
            device: str = "cpu") -> dict:
    """One side's best step: tokens/s, seconds, peak memory (PeakMemory), last loss."""
    for module in SIDE_MODULES[side]:  # the libraries are the baseline, not the peak
        importlib.import_module(module)
    memory = PeakMemory(device)
    step_fn, optimizer, ids = build(side, mode, hf, seq, dtype_name, recompute, device)
    timing = best_training_step(step_fn, optimizer, ids, steps)
    return {"tokens_per_sec": seq / timing.seconds, "step_s": timing.seconds, "optimizer_s": timing.optimizer_seconds,
            "peak_gb": memory.peak_gb(), "loss": timing.loss, "seq": seq}


def child(side: str, mode: str, case: str, dtype_name: str, steps: int, seq_divisor: int, recompute: str) -> dict:
    if side == "minibridge" and mode in TRAINER_MODES:
        from minibridge.memory import keep_freed_memory

        keep_freed_memory()  # first, before any tensor exists, as the command lines do (minibridge.cli)
    hf, seq = case_config(case, "cpu")
    return measure(side, mode, hf, seq // seq_divisor, dtype_name, steps, recompute)


def interleaved_child(mode: str, case: str, dtype_name: str, steps: int, seq_divisor: int, recompute: str) -> dict:
    """Both sides in one process, their steps taken in turn: each side's best step time (seconds).
    On a shared CPU the matmul rate swings up to 3x within seconds; steps of the two sides taken in
    turn see the same swings, where two processes minutes apart do not. Peak memory is not separable."""
    hf, seq = case_config(case, "cpu")
    sides = {side: build(side, mode, hf, seq // seq_divisor, dtype_name, recompute) for side in SIDES}
    times = {side: [] for side in sides}
    for _ in range(steps + 1):
        for side, (step_fn, optimizer, ids) in sides.items():
            times[side].append(timed_step(step_fn, optimizer, ids).seconds)
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


def in_process_results(args, pairs, dtype: str, report_row, device: str = "cuda") -> dict:
    """{(mode, case): {side: result or why none}}: every side in this process, one after the other
    (on CUDA, PeakMemory resets between them), each row reported as soon as it is measured."""
    if any(mode in TRAINER_MODES for mode, _ in pairs):
        from minibridge.memory import keep_freed_memory

        keep_freed_memory()  # the trainer's host-side allocator settings, as its command line sets them
    results = {}
    for mode, case in pairs:
        hf, seq = case_config(case, device, args.layers)
        for side in SIDES:
            try:
                result = measure(side, mode, hf, seq // args.seq_divisor, dtype, args.steps, args.recompute, device)
            except torch.cuda.OutOfMemoryError:
                result = "out of memory (CUDA)"
            except Exception as error:  # one side failing must not lose the other results of the run
                traceback.print_exc()
                result = f"failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            results.setdefault((mode, case), {})[side] = result
            report_row(mode, case, side, result)
    return results


def cpu_results(args, pairs, dtype: str, report_row) -> dict:
    """{(mode, case): {side: result or why none}}: every side in its own process, `--rounds` times."""
    results = {}
    for mode, case in pairs:
        caps = {"minibridge": None, "hf": args.hf_memory_cap_gb or None}
        runs = {side: [] for side in caps}
        for _ in range(args.rounds):
            for side in caps:
                runs[side].append(run_child(__file__, side, mode, case, dtype, args.steps, args.seq_divisor,
                                            args.recompute, memory_cap_gb=caps[side]))
        results[mode, case] = {side: best_run(r) for side, r in runs.items()}
        for side, result in results[mode, case].items():
            report_row(mode, case, side, result)
    return results


def peak_rate(device: str, dtype: str) -> tuple[float | None, str]:
    """(FLOP/s that MFU is taken against, where it comes from)."""
    from minibridge.training.flops import peak_flops

    if device == "cuda":
        peak = peak_flops("cuda", {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype])
        return peak, "datasheet" if peak else "unknown for this GPU: no MFU"
    return cpu_matmul_rates()[dtype], "measured matmul"


def _rate(flops: float | None) -> str:
    if not flops:
        return "-"
    return f"{flops / 1e12:.0f} TFLOP/s" if flops >= 1e12 else f"{flops / 1e9:.1f} GFLOP/s"


def flops_per_token(case: str, device: str, layers: int, seq: int) -> float:
    """Model FLOPs a token of a case's training step (minibridge.training.flops, PaLM's convention)."""
    from minibridge.bridge import config_from_hf
    from minibridge.training.flops import model_flops_per_token

    return model_flops_per_token(config_from_hf(case_config(case, device, layers)[0]), seq)


def mfu(result, case: str, device: str, layers: int, peak: float | None) -> str:
    """The side's model FLOPs utilization, as text."""
    if isinstance(result, str) or not peak:
        return "-"
    return f"{100 * result['tokens_per_sec'] * flops_per_token(case, device, layers, result['seq']) / peak:.1f}%"


def speed_ceiling(mode: str, hf: dict, flops: float, peak: float | None) -> str:
    """The speed over transformers' that no implementation of the same arithmetic passes on this machine:
    transformers' step time over the shortest step there is, the step's matrix products (`flops` a token)
    all at the `peak` rate, then the optimizer step as transformers took it. That holds where both sides
    make torch AdamW's update (not the trainer pairs: their optimizers differ). A bound, not a forecast:
    on CPU the peak is one measured square product, which the model's own shapes may pass by a little."""
    if mode in TRAINER_MODES or not peak:
        return "-"
    return f"{hf['step_s'] / (flops * hf['seq'] / peak + hf['optimizer_s']):.2f}x"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                        help="auto: bf16 on CUDA; on CPU bf16 where it multiplies at least as fast as fp32")
    parser.add_argument("--layers", type=int, default=0, help="layers of every case (0: 4 / 6 on CPU, all on CUDA)")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1,
                        help="CPU: run each pair this many times, the two sides alternating, and keep each side's "
                             "best (on a shared machine the matmul rate swings 3x over tens of seconds)")
    parser.add_argument("--interleaved", action="store_true",
                        help="CPU: also time both sides in one process, steps in turn (the speed ratio of one machine "
                             "phase; the models of both sides must fit in memory together; not the trainer mode)")
    parser.add_argument("--seq-divisor", type=int, default=1, help="divide every sequence length (quick runs)")
    parser.add_argument("--pairs", default=None, help="mode:case,... instead of every mode x case")
    parser.add_argument("--recompute", default="none", choices=["none", "selective", "full"],
                        help="trainer mode: activation recomputation (transformers: gradient checkpointing)")
    parser.add_argument("--hf-memory-cap-gb", type=float, default=0.0,
                        help="CPU: address-space cap of the transformers process (0: none); for cases it cannot fit")
    parser.add_argument("--report", default="bench_train_step", help="name of the report in benchmarks/results/")
    args = parser.parse_args(argv)
    if args.device == "cuda" and (args.interleaved or args.rounds > 1 or args.hf_memory_cap_gb):
        parser.error("--interleaved, --rounds and --hf-memory-cap-gb are for CPU runs")
    if args.device == "cpu" and args.layers:
        parser.error("--layers is for CUDA runs (the CPU cases keep issue 14's depths)")
    return args


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        side, mode, case, dtype, steps, divisor, recompute = sys.argv[2:9]
        run = interleaved_child if side == "both" else partial(child, side)
        print(json.dumps(run(mode, case, dtype, int(steps), int(divisor), recompute)))
        return
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_train_step: --device cuda, but torch.cuda.is_available() is False")
    pairs = ([tuple(p.split(":")) for p in args.pairs.split(",")] if args.pairs else
             [(m, c) for m in args.modes.split(",") for c in args.cases.split(",")])
    on_gpu = args.device == "cuda"
    dtype = args.dtype if args.dtype != "auto" else "bf16" if on_gpu else pick_dtype()
    peak, peak_source = peak_rate(args.device, dtype)
    machine = (f"{device_tag('cuda')}, torch {torch.__version__}, CUDA {torch.version.cuda}" if on_gpu
               else machine_line())
    lines = [f"# bench_train_step ({machine}; {dtype}, batch 1, best of {args.steps} step(s) after a warm-up"
             f"{f' in each of {args.rounds} alternating rounds' if args.rounds > 1 else ''}; MFU against "
             f"{_rate(peak)}, {peak_source})",
             "", f"| mode | case | side | seq | tokens/s | step (s) | MFU | {PeakMemory.LABELS[args.device]} |",
             "|---|---|---|---|---|---|---|---|"]
    if args.hf_memory_cap_gb:
        lines[0] += f"; transformers under a {args.hf_memory_cap_gb:g} GB address-space cap"

    def report_row(mode, case, side, r):
        if isinstance(r, str):
            lines.append(f"| {mode} | {case} | {side} | - | {r} | - | - | - |")
        else:
            lines.append(f"| {mode} | {case} | {side} | {r['seq']} | {r['tokens_per_sec']:.1f} | {r['step_s']:.3f} | "
                         f"{mfu(r, case, args.device, args.layers, peak)} | {r['peak_gb']:.2f} |")
        print(lines[-1], flush=True)

    results = (in_process_results if on_gpu else cpu_results)(args, pairs, dtype, report_row)
    ratios = []
    for (mode, case), sides in results.items():
        mb, hf = sides["minibridge"], sides["hf"]
        turns = interleaved_ratio(args, mode, case, dtype) if args.interleaved else "-"
        if isinstance(mb, dict) and isinstance(hf, dict):
            ceiling = speed_ceiling(mode, hf, flops_per_token(case, args.device, args.layers, hf["seq"]), peak)
            ratios.append(f"| {mode} | {case} | {mb['tokens_per_sec'] / hf['tokens_per_sec']:.2f}x | {turns} | "
                          f"{ceiling} | {mb['peak_gb'] / hf['peak_gb']:.2f}x |")
        elif isinstance(mb, dict):
            ratios.append(f"| {mode} | {case} | transformers {hf} | {turns} | - | minibridge {mb['peak_gb']:.2f} GB |")
    lines += ["", "| mode | case | speed minibridge / HF | same, steps in turn in one process | "
              "ceiling of that speed ratio (speed_ceiling) | peak memory minibridge / HF |", "|---|---|---|---|---|---|",
              *ratios]
    write_report(args.report, lines, args.device)


if __name__ == "__main__":
    main()
