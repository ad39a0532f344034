"""Benchmark: what each data-parallel rank keeps between steps, and the step time, for the plain DP
path with ZeRO-1 (optimizer.use_distributed_optimizer=true) against FSDP2 (dist.use_torch_fsdp2=true),
through the trainer under bf16_mixed on CPU (gloo).

Kept per rank: parameters (bf16 whole under plain DP, fp32 dp shards under FSDP2), fp32 masters
(ZeRO-1: the owned share; FSDP2: none, the shards are the masters), Adam moments, fp32 gradients
(plain: every parameter's main_grad, kept between steps; FSDP2: the sharded .grad, only from backward
to the step, so none between steps).

    python benchmarks/bench_fsdp.py [--dp 2 --steps 6 --seq 256]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
from pathlib import Path

import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _worker(rank, world, port, extra, args, out):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    import torch
    import torch.distributed as dist

    from minibridge.parallel.fsdp import local
    from minibridge.recipes import build_config
    from minibridge.training.loop import Trainer

    torch.set_num_threads(1)
    overrides = [f"train.train_iters={args.steps}", "train.global_batch_size=8", "train.micro_batch_size=2",
                 f"model.seq_length={args.seq}", "train.eval_interval=null", "logger.tensorboard_dir=null",
                 "checkpoint.save=null", "mixed_precision=bf16_mixed", "logger.log_interval=1000", *extra]
    trainer = Trainer(build_config("llama3_debug_pretrain_config", overrides=overrides))
    opt = trainer.optimizer

    def mib(tensors) -> float:
        return sum(local(t).numel() * local(t).element_size() for t in tensors) / 2**20

    times = [trainer.train_step()["step_time"] for _ in range(args.steps)]
    kept = [p.main_grad for p in opt.params.values() if hasattr(p, "main_grad")]  # FSDP2: none between steps
    row = dict(params=mib(trainer.chunks[0].parameters()), grads=mib(kept + [p.grad for p in opt.params.values()
                                                                            if p.grad is not None]),
               masters=mib(m for n, m in opt.masters.items() if m is not opt.params[n]),
               moments=mib(v for s in opt.inner.state.values() for k, v in s.items() if k != "step"),
               step_s=sorted(times[1:])[len(times[1:]) // 2])
    if rank == 0:
        Path(out).write_text(json.dumps(row))
    dist.destroy_process_group()


def run(args, extra: list[str]) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "row.json")
        mp.start_processes(_worker, args=(args.dp, port, extra, args, out), nprocs=args.dp, start_method="spawn")
        return json.loads(Path(out).read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("dp", 2), ("steps", 6), ("seq", 256)):
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    print(f"# bench_fsdp (CPU, gloo, bf16_mixed): llama3 debug model, dp={args.dp}, seq {args.seq}, 8 sequences/step")
    print("\n| path | parameters (MiB) | fp32 masters (MiB) | Adam moments (MiB) | fp32 grads kept (MiB) | "
          "median step (s) |")
    print("|---|---|---|---|---|---|")
    for name, extra in (("plain DP + ZeRO-1", ["optimizer.use_distributed_optimizer=true"]),
                        ("FSDP2", ["dist.use_torch_fsdp2=true"])):
        r = run(args, extra)
        print(f"| {name} | {r['params']:.2f} | {r['masters']:.2f} | {r['moments']:.2f} | {r['grads']:.2f} | "
              f"{r['step_s']:.3f} |")


if __name__ == "__main__":
    main()
