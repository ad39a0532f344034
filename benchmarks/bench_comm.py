"""Benchmark: bytes each tensor-parallel rank sends per training step, by collective, next to the
analytic Megatron volumes for the same shapes; and the CPU step time of TP=2 against TP=1.

Every collective goes through minibridge.parallel.collectives, which a CommCounter watches. Bytes
"sent" assume ring algorithms (what NCCL uses for large messages) on n ranks: all-reduce 2(n-1)/n of
the payload, all-gather (n-1)/n of the output, reduce-scatter (n-1)/n of the input. On gloo (CPU)
reduce-scatter runs as an all-reduce, so wire traffic there is higher; the counts are of the
logical collectives, which is what NCCL would send.

Analytic volumes per step (activation A = batch * seq * hidden * bytes, L layers, t = tp):
  no SP:  all-reduce of A: 2 per layer forward (after attention, after MLP), 2 per layer backward
          (at the region entries), 1 for the embedding forward, 1 for the output layer backward;
          plus 3 all-reduces of (tokens,) fp32 in the vocab-parallel cross entropy.
  SP:     each of those becomes an all-gather + reduce-scatter pair of A; Megatron additionally
          re-all-gathers the input of each column-parallel region in backward (it saves only the
          sequence shard for the weight gradient), minibridge keeps the gathered input instead; plus
          the all-reduce of the norm weights' gradients (partial per sequence shard).

    python benchmarks/bench_comm.py [--hidden 1024 --layers 4 --seq 512 --batch 2 --vocab 32000]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

from minibridge import AutoBridge, ModelConfig  # noqa: E402
from report import write_report  # noqa: E402
from minibridge.parallel import ParallelConfig, count_communication, finalize_grads, initialize  # noqa: E402



def model_config(args) -> ModelConfig:
    return ModelConfig(
        family="llama", vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 3,
        num_layers=args.layers, num_heads=args.hidden // 64, num_kv_heads=max(2, args.hidden // 256),  # kv >= tp
        head_dim=64, tie_word_embeddings=True,
    )


def analytic(args, tp: int, sp: bool, element: int = 4) -> dict[str, float]:
    """Bytes one rank sends per step in Megatron's scheme (see the module docstring)."""
    n, L = tp, args.layers
    A = args.batch * args.seq * args.hidden * element
    ce = 3 * args.batch * args.seq * 4
    ring_ar, ring_1 = 2 * (n - 1) / n, (n - 1) / n
    if not sp:
        return {"all_reduce": ring_ar * ((4 * L + 2) * A + ce)}
    norms = (2 * L + 1) * args.hidden * 4
    # 2L regions: AG + RS forward, RS + AG backward; embedding: RS forward, AG backward; output
    # layer: AG forward, RS backward; Megatron re-gathers the 2L + 1 column-parallel inputs in backward.
    return {
        "all_gather": ring_1 * (4 * L + 2 + 2 * L + 1) * A,
        "reduce_scatter": ring_1 * (4 * L + 2) * A,
        "all_reduce": ring_ar * (ce + norms),
    }


def _worker(rank, world, port, args, tp, sp, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    dims = initialize(ParallelConfig(tp=tp, sequence_parallel=sp))
    model = AutoBridge.from_config(model_config(args)).to_model(parallel=dims, dtype=torch.float32)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    model(ids, labels=ids).backward()  # warm-up
    finalize_grads(model, dims)
    times = []
    for step in range(args.steps):
        torch.distributed.barrier()
        start = time.perf_counter()
        with count_communication() as counter:
            model(ids, labels=ids).backward()
            finalize_grads(model, dims)
        times.append(time.perf_counter() - start)
    if rank == 0:
        queue.put({"sent": counter.sent_bytes(world), "calls": counter.calls, "time": min(times)})
    torch.distributed.destroy_process_group()


def run(args, tp: int, sp: bool) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, tp, port, args, tp, sp, queue)) for r in range(tp)]
    for p in procs:
        p.start()
    result = queue.get(timeout=1800)
    for p in procs:
        p.join()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("hidden", 1024), ("layers", 4), ("seq", 512), ("batch", 2), ("vocab", 32000), ("steps", 3)):
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    mb = 1e6
    lines = [
        "# bench_comm (CPU, gloo, fp32)",
        "",
        f"Llama-shaped model: hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, batch {args.batch} x seq "
        f"{args.seq}. MB sent per rank per training step (forward + backward + gradient sync), ring algorithms.",
        "",
        "| layout | collective | calls | minibridge (MB) | Megatron analytic (MB) | minibridge / analytic |",
        "|---|---|---|---|---|---|",
    ]
    timing = {}
    for tp, sp in ((1, False), (2, False), (2, True)):
        result = run(args, tp, sp)
        timing[(tp, sp)] = result["time"]
        if tp == 1:
            continue
        expected = analytic(args, tp, sp)
        for op in sorted(set(expected) | set(result["sent"])):
            ours, ref = result["sent"].get(op, 0.0), expected.get(op, 0.0)
            ratio = f"{ours / ref:.3f}" if ref else "-"
            lines.append(f"| TP=2{' SP' if sp else ''} | {op} | {result['calls'].get(op, 0)} | {ours / mb:.2f} | {ref / mb:.2f} | {ratio} |")
    lines += [
        "",
        "Step time on this CPU (informational; 2 cores shared by the ranks):",
        "",
        "| layout | step time (s) | vs TP=1 |",
        "|---|---|---|",
    ]
    for (tp, sp), t in timing.items():
        lines.append(f"| TP={tp}{' SP' if sp else ''} | {t:.3f} | {t / timing[(1, False)]:.2f}x |")
    write_report("bench_comm", lines)


if __name__ == "__main__":
    main()
