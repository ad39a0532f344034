"""Benchmark: bytes each context-parallel rank sends per step (forward + backward of one attention
layer) for global layers (ring attention) and sliding-window layers (halo exchange), next to the
analytic volumes, at growing sequence lengths.

Analytic, per rank, with T_loc = T / cp rows of K and V (row = kv_heads x head_dim x bytes, K and V):
  ring:   forward passes the KV block on cp - 1 times; backward passes it on cp - 1 times again to
          recompute, and the dK/dV accumulator travels cp hops back to its owner:
          (2 (cp - 1) + cp) x T_loc KV rows (dK/dV rows weigh the same as K/V rows);
  window: forward sends the rows other ranks need before their chunks (at most 2 (W - 1) per
          receiving rank, fewer when a chunk is shorter than the window), backward returns their
          gradients: it is independent of T, which the table shows.

    python benchmarks/bench_context.py [--cp 2 4] [--window 64]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from report import write_report  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM = 4, 1, 64  # Gemma 3 1B's attention shape
SEQS = (512, 1024, 2048)


def _worker(rank, world, port, window, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from minibridge.parallel.collectives import count_communication
    from minibridge.parallel.context import context_parallel_attention, split_for_context_parallel

    dist.init_process_group("gloo")
    out = {}
    for seq in SEQS:
        g = torch.Generator().manual_seed(seq)
        q = torch.randn(1, seq, HEADS, HEAD_DIM, generator=g)
        k, v = (torch.randn(1, seq, KV_HEADS, HEAD_DIM, generator=g) for _ in range(2))
        for kind, w in (("global (ring)", None), (f"local (window {window})", window)):
            local = [split_for_context_parallel(t, world, rank).requires_grad_() for t in (q, k, v)]
            with count_communication() as counter:
                context_parallel_attention(*local, HEAD_DIM**-0.5, w, None).sum().backward()
            out[(seq, kind)] = counter.bytes.get("p2p", 0)
    queue.put((rank, out))
    dist.destroy_process_group()


def measure(cp: int, window: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, cp, port, window, queue)) for r in range(cp)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=900) for _ in procs)
    for p in procs:
        p.join()
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cp", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--window", type=int, default=64)
    args = parser.parse_args()
    row = KV_HEADS * HEAD_DIM * 4 * 2  # one K row and one V row, fp32
    kb = 1024
    lines = ["# bench_context (gloo, fp32, one attention layer, forward + backward)", "",
             f"{HEADS} query heads, {KV_HEADS} KV head, head_dim {HEAD_DIM}. KiB sent per cp rank (max over ranks).", "",
             "| cp | T | layer | measured (KiB) | analytic (KiB) |", "|---|---|---|---|---|"]
    for cp in args.cp:
        results = measure(cp, args.window)
        for seq in SEQS:
            t_loc = seq // cp
            for kind in ("global (ring)", f"local (window {args.window})"):
                sent = max(results[r][(seq, kind)] for r in results)
                if kind.startswith("global"):
                    analytic = f"{(2 * (cp - 1) + cp) * t_loc * row / kb:.1f}"
                else:
                    analytic = f"<= {2 * 2 * (args.window - 1) * row / kb:.1f} (any T)"
                lines.append(f"| {cp} | {seq} | {kind} | {sent / kb:.1f} | {analytic} |")
                print(lines[-1], flush=True)
    write_report("bench_context", lines)


if __name__ == "__main__":
    main()
