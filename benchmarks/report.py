"""Shared by the benchmark scripts: print a markdown report and keep it under benchmarks/results/."""

import functools
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device_tag(device: str = "cpu") -> str:
    """'cpu', or the CUDA card's name as a file-name slug (e.g. 'nvidia-h100-80gb-hbm3')."""
    if device.startswith("cuda"):
        return "-".join(torch.cuda.get_device_name(torch.device(device)).lower().split())
    return "cpu"


def write_report(name: str, lines: list[str], device: str = "cpu", suffix: str = "md") -> Path:
    """Print `lines` and write them to results/<name>-<device>.<suffix> (results are named by device)."""
    report = "\n".join(lines) + "\n"
    if suffix == "md":
        print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{device_tag(device)}.{suffix}"
    path.write_text(report)
    return path


def run_child(script: str, *args, memory_cap_gb: float | None = None) -> dict | str:
    """Run `script --child args...` in a fresh process (so its peak RSS is its own) and return the JSON
    dict its last stdout line holds, or a short reason why there is none (out of memory, an error).
    `memory_cap_gb` limits the child's address space, so that a side that cannot fit fails on its own
    instead of pushing the whole machine into the kernel's OOM killer."""

    def cap():
        limit = int(memory_cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run([sys.executable, script, "--child", *map(str, args)], capture_output=True, text=True,
                          preexec_fn=cap if memory_cap_gb else None)
    if proc.returncode in (-9, 137):
        return "killed (out of memory)"
    if memory_cap_gb and ("can't allocate memory" in proc.stderr or "MemoryError" in proc.stderr):
        return f"out of memory (over its {memory_cap_gb:g} GB address-space cap)"
    if proc.returncode != 0:
        return f"failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spawn_ranks(worker, world: int, *args, expect: int = 1, timeout: float = 1800) -> list:
    """Run `worker(rank, world, port, *args, queue)` in `world` spawned processes (ranks of a local
    gloo world on a free port) and return the first `expect` objects they put on the queue."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, world, port, *args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=timeout) for _ in range(expect)]
    for p in procs:
        p.join()
    return results


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device`: CUDA kernels run after their launch returns (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(step_fn, optimizer, ids, mark=None) -> torch.Tensor:
    """One forward + backward + optimizer step; its loss. `mark(phase)` (if given) is called as each of
    "forward", "backward", "optimizer" begins (estimate_train_memory attributes the peak to one)."""
    mark = mark or (lambda phase: None)
    mark("forward")
    loss = step_fn(ids)
    mark("backward")
    loss.backward()
    mark("optimizer")
    optimizer.step()
    optimizer.zero_grad()
    return loss


class StepTiming(NamedTuple):
    seconds: float  # forward + backward + optimizer step
    loss: float
    optimizer_seconds: float  # of it, `optimizer.step()` and `zero_grad()` (~0 where backward stepped already)


def timed_step(step_fn, optimizer, ids) -> StepTiming:
    """One forward + backward + optimizer step, timed, on the device of `ids`."""
    starts = {}

    def mark(phase):
        synchronize(ids.device)
        starts[phase] = time.perf_counter()

    loss = train_step(step_fn, optimizer, ids, mark=mark)
    synchronize(ids.device)
    end = time.perf_counter()
    return StepTiming(end - starts["forward"], float(loss.detach()), end - starts["optimizer"])


def best_training_step(step_fn, optimizer, ids, steps: int) -> StepTiming:
    """The fastest of `steps` forward + backward + optimizer steps after one warm-up step (allocator,
    optimizer state), with the last step's loss; the fastest, since other processes only ever slow a
    step down."""
    runs = [timed_step(step_fn, optimizer, ids) for _ in range(steps + 1)]  # the first one warms up
    return min(runs[1:] or runs, key=lambda run: run.seconds)._replace(loss=runs[-1].loss)


@functools.lru_cache(maxsize=None)
def cpu_matmul_rates() -> dict[str, float]:
    """Measured square-matmul FLOP/s of this CPU in fp32 and bf16 (the rates the dtype choice rests on)."""
    from minibridge.training.flops import measure_cpu_matmul_flops

    return {name: measure_cpu_matmul_flops(dtype, seconds=1.0) for name, dtype in
            (("fp32", torch.float32), ("bf16", torch.bfloat16))}


def machine_line() -> str:
    """The CPU, its capability as torch sees it (AVX2 / AVX512 / AMX) and its measured matmul rates."""
    rates = cpu_matmul_rates()
    return (f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, capability "
            f"{torch.backends.cpu.get_cpu_capability()}, matmul fp32 {rates['fp32'] / 1e9:.1f} / bf16 "
            f"{rates['bf16'] / 1e9:.1f} GFLOP/s, {library_versions()}")


def library_versions() -> str:
    """torch's and transformers' versions (the reference moves: issue 33 found 5.25 much faster than 5.17)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        hf = version("transformers")
    except PackageNotFoundError:
        hf = "absent"
    return f"torch {torch.__version__}, transformers {hf}"


def pick_dtype() -> str:
    """bf16 where this CPU multiplies it at least as fast as fp32 (AMX / AVX512-BF16), else fp32: on an
    AVX2-only CPU bf16 matmuls run at ~1 GFLOP/s and a bf16 training step takes hours."""
    rates = cpu_matmul_rates()
    return "bf16" if rates["bf16"] >= rates["fp32"] else "fp32"
