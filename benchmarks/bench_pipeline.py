"""Benchmark: the idle (bubble) fraction of each pipeline rank under 1F1B and interleaved 1F1B.

The real schedules and point-to-point executor (minibridge.parallel.pipeline) run on gloo ranks, but
each stage's compute is a fixed sleep (forward t, backward 2t), so what is measured is the schedule,
not how 2 shared CPU cores happen to be scheduled. Per rank, bubble = wall time of the step minus
its busy time (actions minus the time spent waiting to receive); the table prints bubble / busy (the ideal step) next to Megatron's (p - 1) / (v x m).

    python benchmarks/bench_pipeline.py [--unit-ms 20]
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
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from report import write_report  # noqa: E402

LAYOUTS = [(2, 1, 4), (2, 1, 8), (4, 1, 8), (4, 1, 16), (2, 2, 4), (2, 2, 8), (4, 2, 8), (4, 2, 16)]
HIDDEN = 64


class _Sleep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, seconds):
        ctx.seconds = seconds
        time.sleep(seconds)
        return x * 1.0

    @staticmethod
    def backward(ctx, grad):
        time.sleep(2 * ctx.seconds)  # a backward costs about two forwards
        return grad, None


class SleepStage(torch.nn.Module):
    """Stands in for a CausalLM chunk: the two calls the pipeline makes (hidden_states, loss), fixed compute time."""

    def __init__(self, first: bool, last: bool, seconds: float):
        super().__init__()
        self.is_first, self.is_last, self.seconds = first, last, seconds
        self.weight = torch.nn.Parameter(torch.ones(HIDDEN))
        self.config = type("Config", (), {"hidden_size": HIDDEN})()

    def hidden_states(self, input_ids, position_ids=None, document_ids=None, hidden_states=None):
        if self.is_first:
            hidden_states = torch.ones(*input_ids.shape, HIDDEN)
        return _Sleep.apply(hidden_states * self.weight, self.seconds)

    def loss(self, hidden, targets, reduction="sum"):
        return hidden.sum()


def _worker(rank, world, port, pp, vp, m, unit, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    from minibridge.parallel import ParallelConfig, initialize
    from minibridge.parallel.pipeline import MicroBatch, PipelineExecutor, chunk_stages

    dims = initialize(ParallelConfig(pp=pp, vp=vp))
    stages = chunk_stages(pp, vp, dims.pp_rank)
    chunks = [SleepStage(s == 0, s == pp * vp - 1, unit / vp) for s in stages]
    batches = [MicroBatch(torch.zeros(1, 8, dtype=torch.long)) for _ in range(m)]
    executor = PipelineExecutor(chunks, dims)
    executor.run(batches)  # warm-up
    torch.distributed.barrier()
    start = time.perf_counter()
    executor.run(batches, timed=True)
    wall = time.perf_counter() - start
    busy = sum(end - begin for _, begin, end in executor.timeline) - executor.wait_time
    queue.put((rank, (wall - busy) / busy))
    torch.distributed.destroy_process_group()


def measure(pp, vp, m, unit) -> list[float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, pp, port, pp, vp, m, unit, queue)) for r in range(pp)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=600) for _ in procs)
    for p in procs:
        p.join()
    return [results[r] for r in range(pp)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unit-ms", type=float, default=20.0, help="forward time of a whole stage's layers")
    args = parser.parse_args()
    lines = ["# bench_pipeline (gloo, stage compute simulated by sleeps)", "",
             f"Forward {args.unit_ms:.0f} ms and backward {2 * args.unit_ms:.0f} ms per micro-batch per pipeline rank.",
             "bubble = (step wall time - busy time) / busy time, per pipeline rank; busy excludes waiting for a neighbour.", "",
             "| p | v | m | schedule | measured bubble per rank | worst | (p - 1) / (v x m) |", "|---|---|---|---|---|---|---|"]
    for pp, vp, m in LAYOUTS:
        bubbles = measure(pp, vp, m, args.unit_ms / 1000)
        kind = "1F1B" if vp == 1 else "interleaved"
        per_rank = ", ".join(f"{b:.3f}" for b in bubbles)
        lines.append(f"| {pp} | {vp} | {m} | {kind} | {per_rank} | {max(bubbles):.3f} | {(pp - 1) / (vp * m):.3f} |")
        print(lines[-1], flush=True)
    write_report("bench_pipeline", lines)


if __name__ == "__main__":
    main()
