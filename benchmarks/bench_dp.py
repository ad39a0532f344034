"""Benchmark: data parallelism on spawned gloo ranks. (1) per-rank memory of parameters + gradients +
optimizer state for plain DP, ZeRO-1 and FSDP2 at dp = 1, 2, 4, against the analytic 1/dp figures;
(2) how much of the gradient all-reduce backward hides with `ddp.overlap_grad_reduce` (dp = 2).

Memory is counted from the tensors themselves (each rank's own storages; a DTensor's local shard):
gradients after backward and their reduction, weights and Adam state after the optimizer step (all
three coexist during the step: their peak). fp32 training, AdamW: per parameter 4 B weights + 4 B gradient + 8 B Adam moments. Analytic
per-rank bytes, P parameters on d ranks:
    plain DP   4P + 4P + 8P        (everything replicated)
    ZeRO-1     4P + 4P + 8P/d      (optimizer state split: MixedPrecisionAdamW(distributed=True);
                                    in fp32 the masters are the weights themselves)
    FSDP2      (4P + 4P + 8P)/d    (torch's fully_shard per block, then the root: all three split)
ZeRO-1's split is by whole parameters (greedy by size), so it lands near, not on, 8P/d; FSDP2 pads
each parameter's dim 0 to a multiple of d. The overlapped reducer's flat bucket copies (alive from
the first backward on, kept between steps) are shown apart.

Hidden fraction (dp = 2): best of a few repetitions (each the slowest rank's time) of backward alone, the reduction alone
(finalize_grads, 25 MB buckets), backward then the reduction, and backward with the overlapped
reducer then its finish; hidden = (backward + reduce - overlapped) / reduce. Each rank gets one of
this machine's cores; gloo's communication threads share them with backward, so on few cores the
overlap competes with compute for CPU time (on GPUs the all-reduce runs on its own stream and links).

    python benchmarks/bench_dp.py [--hidden 1024 --layers 4 --vocab 16000 --seq 128 --repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

from minibridge import AutoBridge, ModelConfig  # noqa: E402
from minibridge.parallel import ParallelConfig, finalize_grads, initialize  # noqa: E402
from minibridge.parallel.overlap import GradReducer  # noqa: E402
from minibridge.parallel.fsdp import apply_fsdp, local  # noqa: E402
from minibridge.training.optimizer import MixedPrecisionAdamW  # noqa: E402
from report import machine_line, spawn_ranks, write_report  # noqa: E402

MODES = ("plain DP", "ZeRO-1", "FSDP2")
DIVIDED = {"plain DP": (False, False, False), "ZeRO-1": (False, False, True), "FSDP2": (True, True, True)}


def model_config(args) -> ModelConfig:
    return ModelConfig(family="llama", vocab_size=args.vocab, hidden_size=args.hidden,
                       intermediate_size=args.hidden * 3, num_layers=args.layers, num_heads=args.hidden // 64,
                       num_kv_heads=max(1, args.hidden // 256), head_dim=64, tie_word_embeddings=True)


def fsdp2_model(model: torch.nn.Module, dims) -> torch.nn.Module:
    """The FSDP2 rows' model: minibridge's FSDP2 pass (the trainer's dist.use_torch_fsdp2), fully_shard on
    each block, then on the root (its embedding, norm and tied output layer), over the dp ranks."""
    apply_fsdp(model, dims)
    return model


def _nbytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        t = local(t)
        key = t.untyped_storage().data_ptr()
        if t.numel() and key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def _batch(args, rank: int) -> torch.Tensor:
    return torch.randint(0, args.vocab, (1, args.seq), generator=torch.Generator().manual_seed(rank))


def measure_memory(args, dims, mode: str) -> dict:
    model = AutoBridge.from_config(model_config(args)).to_model(parallel=dims, dtype=torch.float32)
    if mode == "FSDP2":
        model = fsdp2_model(model, dims)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    else:
        optimizer = MixedPrecisionAdamW(model, lr=1e-4, dims=dims, distributed=mode == "ZeRO-1")
    ids = _batch(args, dims.rank)
    model(ids, labels=ids).backward()
    if mode != "FSDP2":
        finalize_grads(model, dims)
    params = list(model.parameters())
    grads = _nbytes(p.grad for p in params if p.grad is not None)  # the step may drop them once applied
    optimizer.step()
    inner = optimizer.inner if mode != "FSDP2" else optimizer
    state = [v for s in inner.state.values() for v in s.values() if torch.is_tensor(v) and v.ndim > 0]
    out = {"params": _nbytes(params), "grads": grads, "state": _nbytes(state),
           "count": sum(local(p).numel() for p in params)}
    if mode == "plain DP" and dims.dp > 1:  # the overlapped reducer's flat bucket copies
        optimizer.zero_grad()
        reducer = GradReducer(model, dims)
        reducer.arm()
        model(ids, labels=ids).backward()
        out["flat"] = sum(b.flat.numel() * 4 for b in reducer.buckets if b.flat is not None)
        finalize_grads(model, dims, reducer=reducer)
    del model, optimizer, params, state, inner
    gc.collect()
    return out


def _timed(fn) -> float:
    """Seconds from a barrier to the slowest rank's end: a reduction waits for the slowest rank's
    backward, so backward alone is timed the same way."""
    dist.barrier()
    start = time.perf_counter()
    fn()
    elapsed = torch.tensor(time.perf_counter() - start, dtype=torch.float64)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return elapsed.item()


def measure_overlap(args, dims) -> dict:
    """Seconds (best of args.repeats) of backward, the reduction, and both without / with overlap."""
    model = AutoBridge.from_config(model_config(args)).to_model(parallel=dims, dtype=torch.float32)
    optimizer = MixedPrecisionAdamW(model, lr=1e-4, dims=dims)  # zero_grad; no step taken
    reducer = GradReducer(model, dims)
    ids = _batch(args, dims.rank)
    times = {k: [] for k in ("backward", "reduce", "serial", "overlapped")}
    for _ in range(args.repeats + 1):  # the first round warms up (allocator, gloo buffers)
        for kind in times:
            optimizer.zero_grad()
            loss = model(ids, labels=ids)
            if kind == "overlapped":
                reducer.arm()
                times[kind].append(_timed(lambda: (loss.backward(), finalize_grads(model, dims, reducer=reducer))))
            elif kind == "reduce":
                loss.backward()
                times[kind].append(_timed(lambda: finalize_grads(model, dims)))
            elif kind == "serial":
                times[kind].append(_timed(lambda: (loss.backward(), finalize_grads(model, dims))))
            else:
                times[kind].append(_timed(loss.backward))
    return {k: min(v[1:]) for k, v in times.items()} | {"buckets": len(reducer.buckets)}


def _worker(rank, world, port, args, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    dims = initialize(ParallelConfig())  # dp = world
    result = {"memory": {}}
    for mode in MODES:
        try:
            result["memory"][mode] = measure_memory(args, dims, mode)
        except Exception as err:  # FSDP2 on this torch / backend: say why, keep the other rows
            result["memory"][mode] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    if world == 2:
        result["overlap"] = measure_overlap(args, dims)
    if rank == 0:
        queue.put(result)
    dist.destroy_process_group()


def analytic(count: int, dp: int, mode: str) -> dict:
    """Bytes per rank for `count` parameters (the whole model's), as the module docstring says."""
    split = DIVIDED[mode]
    return {part: per * count / (dp if divided else 1)
            for part, per, divided in zip(("params", "grads", "state"), (4, 4, 8), split)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("hidden", 1024), ("layers", 4), ("vocab", 16000), ("seq", 128), ("repeats", 5)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--dp", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    mb = 2**20
    load = os.getloadavg()[0]  # other processes on these cores slow the timings (never the memory figures)
    results = {dp: spawn_ranks(_worker, dp, args)[0] for dp in args.dp}
    full = results[min(args.dp)]["memory"]["plain DP"]["count"] * min(args.dp)  # every parameter, once
    lines = [
        "# bench_dp (CPU, gloo, fp32)",
        "",
        machine_line() + f"; load average {load:.1f} when the run began",
        "",
        f"Llama-shaped model, tied embeddings: hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}: "
        f"{full / 1e6:.1f}M parameters ({4 * full / mb:.0f} MiB fp32). `python benchmarks/bench_dp.py`.",
        "",
        "Per-rank MiB after backward and the AdamW step (measured tensors / analytic 1/dp figures):",
        "",
        "| dp | mode | params | grads | Adam state | total | analytic total | measured / analytic |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dp, result in results.items():
        for mode in MODES:
            got = result["memory"][mode]
            if isinstance(got, str):
                lines.append(f"| {dp} | {mode} | {got} | | | | | |")
                continue
            want = analytic(full, dp, mode)
            total, expected = got["params"] + got["grads"] + got["state"], sum(want.values())
            cells = " | ".join(f"{got[k] / mb:.0f} / {want[k] / mb:.0f}" for k in ("params", "grads", "state"))
            lines.append(f"| {dp} | {mode} | {cells} | {total / mb:.0f} | {expected / mb:.0f} | {total / expected:.3f} |")
    flats = {dp: r["memory"]["plain DP"].get("flat") for dp, r in results.items()
             if isinstance(r["memory"]["plain DP"], dict) and r["memory"]["plain DP"].get("flat")}
    if flats:
        lines += ["", "With `ddp.overlap_grad_reduce=true` the flat bucket copies add "
                  "per rank: " + ", ".join(f"dp={dp}: {f / mb:.0f} MiB" for dp, f in flats.items())
                  + " (one fp32 copy of the gradients, kept between steps)."]
    if 2 in results:
        o = results[2]["overlap"]
        hidden_serial = (o["backward"] + o["reduce"] - o["serial"]) / o["reduce"]
        hidden = (o["backward"] + o["reduce"] - o["overlapped"]) / o["reduce"]
        lines += [
            "", f"Gradient all-reduce hidden behind backward, dp=2, batch 1 x {args.seq} tokens, "
            f"{o['buckets']} buckets of 25 MB, best of {args.repeats} (seconds):", "",
            "| backward | reduce | backward + reduce, no overlap | backward + reduce, overlap | hidden, no overlap "
            "| hidden, overlap | overlap speed-up |",
            "|---|---|---|---|---|---|---|",
            f"| {o['backward']:.3f} | {o['reduce']:.3f} | {o['serial']:.3f} | {o['overlapped']:.3f} | "
            f"{hidden_serial:.2f} | {hidden:.2f} | {o['serial'] / o['overlapped']:.2f}x |",
            "", "hidden = (backward + reduce - measured) / reduce: 0 when nothing overlaps, 1 when the reduction is "
            "free. Each rank has one core, shared with gloo's threads.",
        ]
    write_report("bench_dp", lines)


if __name__ == "__main__":
    main()
